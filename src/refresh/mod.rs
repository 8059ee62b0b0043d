//! Keeping tokens fresh: one supervised actor per client fetches its token, refreshes it well
//! before expiry, backs off on failure and publishes the result to the store; between refreshes
//! it sleeps and one timer wheel wakes it.
//!
//! - `supervisor`: runs, puts to sleep and restarts the clients' actors within a budget.
//! - `actor`: one client's fetch-schedule-publish loop.
//! - `alarm`: the one timer wheel for every sleeping client.
//! - `schedule`: pure functions for refresh times and backoff delays.
//! - `clients`: the running set of clients, built from the config and changed by reloads.
//! - `policy`: the `[refresh]` settings.

pub mod actor;
pub mod alarm;
pub mod clients;
mod policy;
pub mod schedule;
pub mod supervisor;

pub use policy::RefreshPolicy;
