//! The limits on failed code checks. Each kind of code has its own failure state per user
//! (email-change codes, 2FA codes at setup, 2FA codes at sign-in): after 5 consecutive
//! failures checks of that kind are refused for 30 s, doubling with each further failure up
//! to 15 minutes. Only a success of the same kind of check resets it; no other route touches
//! it (disabling 2FA, a new email-change request, a success of another kind: none do).
use crate::error::ApiError;
use crate::users::UserId;
use serde::{Deserialize, Serialize};

pub const FREE_FAILURES: u32 = 5;
const FIRST_LOCK_MS: u64 = 30_000;
const MAX_LOCK_MS: u64 = 15 * 60_000;

/// The kind of code a check tests, each with its own failure limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeCheck {
    /// `verify_email`: the code mailed to a new address.
    EmailChange,
    /// `two_factor_validate` / `validate_2fa`: the first code of a pending TOTP setup.
    TotpSetup,
    /// `two_factor_verify`: a TOTP or backup code at sign-in.
    SignIn,
}

impl CodeCheck {
    /// The name of the check's failure state in the limits table.
    pub fn name(self) -> &'static str {
        match self {
            CodeCheck::EmailChange => "failures#email_change",
            CodeCheck::TotpSetup => "failures#totp_setup",
            CodeCheck::SignIn => "failures#sign_in",
        }
    }
}

/// Consecutive failed checks of one kind, and until when (epoch milliseconds) further
/// checks of that kind are refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureState {
    #[serde(default)]
    pub count: u32,
    #[serde(default)]
    pub locked_until_ms: u64,
}

/// Seconds to wait, rounded up, so that a client waiting exactly `Retry-After` is let in.
pub fn retry_after_secs(until_ms: u64, now_ms: u64) -> u64 {
    until_ms.saturating_sub(now_ms).div_ceil(1000).max(1)
}

/// Refuses the check while locked, without looking at the code.
pub fn check(state: &FailureState, now_ms: u64) -> Result<(), ApiError> {
    if state.locked_until_ms > now_ms {
        return Err(ApiError::Throttled {
            retry_after_secs: retry_after_secs(state.locked_until_ms, now_ms),
        });
    }
    Ok(())
}

/// The state after one more failure at `now_ms`.
pub fn after_failure(state: &FailureState, now_ms: u64) -> FailureState {
    let count = state.count.saturating_add(1);
    let locked_until_ms = if count >= FREE_FAILURES {
        let doublings = (count - FREE_FAILURES).min(16);
        now_ms + (FIRST_LOCK_MS << doublings).min(MAX_LOCK_MS)
    } else {
        0
    };
    FailureState {
        count,
        locked_until_ms,
    }
}

/// A failure to charge: the state it was read as (the charge is a compare-and-set on it),
/// and what else must change in the same write (an email-change request's own count, the
/// record of a lock it starts).
pub struct FailureCharge {
    pub seen: FailureState,
    pub(crate) also: Vec<crate::store::PendingWrite>,
}

impl FailureCharge {
    pub fn of(seen: FailureState) -> Box<Self> {
        Box::new(FailureCharge {
            seen,
            also: Vec::new(),
        })
    }

    /// A charge written in one transaction with `also` (the use of a passkey challenge).
    pub fn with(seen: FailureState, also: crate::store::PendingWrite) -> Box<Self> {
        Box::new(FailureCharge {
            seen,
            also: vec![also],
        })
    }
}

impl CodeCheck {
    /// The check's name in the audit trail and the metrics.
    pub fn short_name(self) -> &'static str {
        match self {
            CodeCheck::EmailChange => "email_change",
            CodeCheck::TotpSetup => "totp_setup",
            CodeCheck::SignIn => "sign_in",
        }
    }
}

/// What one try at a limited code check came to.
pub enum Attempt<T> {
    /// The code was wrong: charge a failure against the state as read (with whatever else
    /// must change in the same write), then answer with the error.
    Failed(Box<FailureCharge>, ApiError),
    /// The code was right and the success was committed.
    Done(T),
    /// A commit lost a race with another check: read again and retry.
    Conflict,
}

/// Runs a code check of one kind under its failure limit. `attempt` reads the state (and
/// refuses with `check` while locked, before comparing anything), tests the code and commits
/// a success conditioned on the state it read; a failure is charged here with a
/// compare-and-set. Every answer that reveals whether a code was right is thus counted
/// exactly once, however many checks race. A failure that locks the check writes
/// `lock_event` (a `lock_started` record) in the same transaction as the charge, and every
/// counted failure and lock is a metric of the request.
pub async fn limited<T, F, Fut>(
    store: &crate::store::Store,
    uuid: UserId,
    check: CodeCheck,
    lock_event: crate::security_events::SecurityEvent,
    mut attempt: F,
) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Attempt<T>, ApiError>>,
{
    for round in 0..12u32 {
        if round > 0 {
            let jitter = rand::random::<u64>() % (5u64 << round.min(5));
            tokio::time::sleep(std::time::Duration::from_millis(2 + jitter)).await;
        }
        match attempt().await? {
            Attempt::Done(value) => return Ok(value),
            Attempt::Conflict => continue,
            Attempt::Failed(mut charge, error) => {
                let next = after_failure(&charge.seen, crate::clock::now_millis());
                let locks = next.locked_until_ms > 0;
                if locks {
                    let event = lock_event.clone().with_detail(check.short_name());
                    charge.also.push(store.security_event_write(&event)?);
                }
                if store.charge_failure(uuid, check, &next, *charge).await? {
                    crate::metrics::count(crate::metrics::Counter::CodeCheckFailures);
                    if locks {
                        crate::metrics::count(crate::metrics::Counter::Locks);
                    }
                    return Err(error);
                }
            }
        }
    }
    Err(ApiError::Throttled {
        retry_after_secs: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_five_then_doubles_to_fifteen_minutes() {
        let mut state = FailureState::default();
        let now = 1_000_000;
        let mut locks = Vec::new();
        for _ in 0..12 {
            state = after_failure(&state, now);
            locks.push(state.locked_until_ms.saturating_sub(now) / 1000);
        }
        assert_eq!(
            locks,
            vec![0, 0, 0, 0, 30, 60, 120, 240, 480, 900, 900, 900]
        );
        assert_eq!(
            check(&state, now + 899_000),
            Err(ApiError::Throttled {
                retry_after_secs: 1
            })
        );
        assert_eq!(check(&state, now + 900_000), Ok(()));
    }

    #[test]
    fn retry_after_is_rounded_up_to_the_moment_the_lock_ends() {
        let locked = FailureState {
            count: 5,
            locked_until_ms: 130_000,
        };
        // Right after the fifth failure: the whole 30 s.
        assert_eq!(
            check(&locked, 100_000),
            Err(ApiError::Throttled {
                retry_after_secs: 30
            })
        );
        // 0.4 s before the end: wait 1 s, never 0.
        assert_eq!(
            check(&locked, 129_600),
            Err(ApiError::Throttled {
                retry_after_secs: 1
            })
        );
        assert_eq!(
            check(&locked, 100_001),
            Err(ApiError::Throttled {
                retry_after_secs: 30
            })
        );
        assert_eq!(check(&locked, 130_000), Ok(()));
    }

    #[test]
    fn each_kind_has_its_own_state() {
        let names = [
            CodeCheck::EmailChange.name(),
            CodeCheck::TotpSetup.name(),
            CodeCheck::SignIn.name(),
        ];
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), 3);
    }
}
