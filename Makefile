# Factura: `make demo` shows the whole flow, `make test` runs lint and every test.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
UV ?= python3 -m uv
STAMP := $(VENV)/.installed
SRC := libs/common/src services/*/src devstack/src

.PHONY: install lock lint fmt schemas test test-unit test-integration test-outages test-chaos up down status logs demo bench bench-render bench-consumer bench-sigkill bench-delivery bench-scheduler bench-audit bench-ingest dashboards clean

install: $(STAMP)

$(STAMP): requirements.lock libs/common/pyproject.toml services/*/pyproject.toml devstack/pyproject.toml
	./scripts/system-deps.sh
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv==0.13.9
	$(UV) venv --quiet --allow-existing -p 3.11 $(VENV)
	$(UV) pip install --quiet --compile-bytecode -p $(VENV) -r requirements.lock
	# Bytecode for our own (editable) packages too: where PYTHONDONTWRITEBYTECODE is set (this CI
	# image) every process start would otherwise recompile ~1 600 modules (renderer: 5.2 s → 1.8 s).
	$(PY) -m compileall -q -j 0 libs services devstack tests benchmarks >/dev/null
	@touch $@

lock:  ## re-pin every dependency (the output names no download host)
	$(UV) pip compile -q -p 3.11 requirements.in --generate-hashes -o requirements.lock

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy $(SRC) tests benchmarks scripts

fmt: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

schemas: install  ## re-export the JSON Schemas from the pydantic models
	$(PY) -m factura.common.schemas

test: lint
	$(VENV)/bin/pytest -q

test-unit: install
	$(VENV)/bin/pytest -q tests/unit

test-outages: install  ## the e2e outage tests with each dependency down for a full minute (~5 min)
	FACTURA_TEST_OUTAGE_S=60 $(VENV)/bin/pytest -q tests/e2e/test_outages.py

test-chaos: install  ## chaos suite at full size: 1 000 invoices per scenario, 20-30 s outages, a table row per scenario (~30 min)
	FACTURA_CHAOS_SCENARIOS=all FACTURA_CHAOS_INVOICES=1000 FACTURA_CHAOS_OUTAGE_S=30 FACTURA_CHAOS_BROKER_PAUSE_S=20 FACTURA_CHAOS_SETTLE_S=1200 \
		$(VENV)/bin/pytest -q -o timeout=3600 tests/chaos

test-integration: install
	$(VENV)/bin/pytest -q tests/integration tests/e2e

up: install
	$(PY) -m factura.devstack up

down:
	$(PY) -m factura.devstack down

status:
	$(PY) -m factura.devstack status

logs:
	$(PY) -m factura.devstack logs --follow

demo: install
	$(PY) -m factura.devstack.demo

bench: install  ## end to end, ERP topic → SMTP 250, 1 000 then 10 000 invoices per render engine; stages, p99 at 70 %, 1/2/4 workers (long: about 45 minutes here)
	$(PY) -m benchmarks.bench_e2e

bench-render: install  ## renderer full cost vs bare WeasyPrint, p50/p95, 2-core scaling, worker RSS (~3 min)
	$(PY) -m benchmarks.bench_render

bench-consumer: install  ## ConsumerLoop vs raw aiokafka, and healthy partitions while one fails (~2 min)
	$(PY) -m benchmarks.bench_consumer

bench-sigkill: install  ## 300 invoices while the senders are SIGKILLed 20 times: lost and duplicate counts (~3 min)
	$(PY) -m benchmarks.bench_sigkill

bench-delivery: install  ## email sender vs bare aiosmtplib (1000 mails, 60 KB PDF), bounce-to-SMS p50/p99 (~1.5 min)
	$(PY) -m benchmarks.bench_delivery

bench-scheduler: install  ## 100k open invoices: RSS per invoice, idle tick at 10k/100k, a tick emitting 10k reminders (~6 min)
	$(PY) -m benchmarks.bench_scheduler

bench-audit: install  ## audit: raw insert_many vs the chained consumer, timeline/search p95 and verify/s at 1 M records (~11 min)
	$(PY) -m benchmarks.bench_audit

bench-ingest: install  ## ingest: 100k-row CSV and API batches to invoice.created vs raw produce, loader peak RSS (~8-11 min)
	$(PY) -m benchmarks.bench_ingest

dashboards: install  ## draw the deploy/grafana dashboards as PNGs from live data into docs/dashboards (~3 min)
	$(PY) scripts/render_dashboards.py

clean: down
	rm -rf .data
