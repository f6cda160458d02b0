//! The mock Symphony pod: login, pod, agent and Datafeed v2 endpoints plus a `/_sandbox/` control API.
