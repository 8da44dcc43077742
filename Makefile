# Shortcuts for people used to the old service's make targets.
.PHONY: dev test up down check-deploy bench

dev:            ## run the service on a private PostgreSQL
	scripts/run.sh

test:           ## every test, against a throwaway PostgreSQL
	scripts/test.sh

up:             ## the compose stack: PostgreSQL, ticket-ingest, Prometheus, Grafana
	docker compose -f docker/compose.yml up --build -d

down:
	docker compose -f docker/compose.yml down

check-deploy:   ## validate compose, alert rules and dashboard
	scripts/check-deploy.sh

bench:          ## one side-by-side benchmark run (nginx, ticket-ingest, COPY)
	loadtest/bench.sh
