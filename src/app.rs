//! Wiring: builds the clients, store and services, runs the tasks, stops them cleanly.
