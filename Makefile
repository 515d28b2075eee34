.PHONY: install test lint debug data-twemoji
install:  ## create .venv and install everything (plus SLURM/Chromium/Fashion-MNIST when root)
	bash scripts/install.sh
test:     ## the full test suite
	bash scripts/test.sh
lint:
	.venv/bin/ruff check capsgan_dist tests benchmarks scripts
debug:    ## a seconds-long training run on synthetic data
	.venv/bin/capsgan train configs/debug.yaml
data-twemoji:  ## the 3,781 Twemoji as data/twemoji64/<category>/*.png (npm; CC-BY 4.0, docs/data.md)
	bash scripts/get_twemoji.sh data/twemoji64
