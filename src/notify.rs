//! systemd readiness notifications (`sd_notify(3)`), a no-op when not run by systemd.
//!
//! `READY=1` once listening, `RELOADING=1` with `MONOTONIC_USEC` then `READY=1` around each
//! reload (systemd ≥ 253 fails a `Type=notify-reload` reload without `MONOTONIC_USEC`),
//! `STOPPING=1` when draining starts. `STATUS=` carries a line for `systemctl status`.

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("sd_notify failed: {e}");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    match NotifyState::monotonic_usec_now() {
        Ok(now) => states.push(now),
        Err(e) => tracing::warn!("cannot read the monotonic clock for sd_notify: {e}"),
    }
    send(&states);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}
