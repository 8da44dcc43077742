//! API tests: the real service, a real PostgreSQL, a fresh database per test.

mod admission;
mod batches;
mod browser;
mod config;
mod console;
mod console_input;
mod console_pages;
mod contract;
mod disk;
mod durability;
mod failover;
mod helpers;
mod idempotency;
mod limits;
mod openapi;
mod partition;
mod patroni;
mod readiness;
mod reload;
mod reprocess;
mod scale;
mod schemathesis;
mod shutdown;
mod signatures;
mod storage;
mod store;
