# Shortcuts for people used to the old service's make targets; each is one
# script or command, run from the repository root.
.PHONY: dev test up down check-deploy bench

dev:            ## run the service on http://127.0.0.1:9098 (private PostgreSQL unless TICKET_INGEST_DATABASE_URL is set)
	scripts/run.sh

test:           ## every test, against a throwaway PostgreSQL
	scripts/test.sh

up:             ## the compose stack: PostgreSQL, ticket-ingest, Prometheus, Grafana (needs a Docker engine)
	docker compose -f docker/compose.yml up --build -d

down:
	docker compose -f docker/compose.yml down

check-deploy:   ## validate docker/ (compose, alert rules, dashboard); make check-deploy CHECK_METRICS_URL=http://127.0.0.1:9098/metrics also lints a running instance
	scripts/check-deploy.sh

bench:          ## one side-by-side benchmark run (nginx, ticket-ingest, COPY)
	loadtest/bench.sh
