# The task runner: the same entry points people and CI use.
.PHONY: up test screenshots fmt lint bench bench-all bench-edge bench-limits bench-gold bench-pipeline bench-scale
up:      ## run the whole system on the embedded default
	./scripts/up.sh
test:    ## the whole test suite (what CI runs)
	./scripts/test.sh
screenshots:  ## the dashboard's and front page's screenshots in docs/images/ (browser test)
	./scripts/screenshots.sh
fmt:
	cargo fmt --all
lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	buf lint
bench-all:       ## every benchmark figure of docs/BENCHMARKS.md in one run
	./scripts/bench.sh
bench-gold:      ## original gold journey and fixed 1,000 req/s, CPU per request (k6)
	./scripts/bench-gold.sh
bench:   ## resolve benchmark (see docs/BENCHMARKS.md)
	./scripts/bench-resolve.sh
bench-edge:      ## redirects through the edge vs NGINX (wrk)
	./scripts/bench-edge.sh
bench-limits:    ## cost of shared (Redis) rate limiting on the redirect path
	./scripts/bench-edge.sh 64 10 limits
bench-pipeline:  ## k6 gold tier with the event pipeline and consumer lag
	./scripts/bench-pipeline.sh
bench-scale:     ## endpoint p50/p99 on the seed set vs 10M links / 50M events (wrk)
	./scripts/bench-scale.sh
