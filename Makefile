# Shortcuts for the two scripts (the README uses the scripts: a fresh Debian has no make).
.PHONY: run test bench
run:
	bash scripts/run.sh
test:
	bash scripts/test.sh
bench:
	bash bench/run.sh
