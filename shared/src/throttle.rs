//! The limit on failed code checks (2FA codes, backup codes, email codes): after 5
//! consecutive failures checks are refused for 30 s, doubling with each further failure up
//! to 15 minutes; a success resets the count.
use crate::error::ApiError;
use crate::store::two_factor::FailureState;

pub const FREE_FAILURES: u32 = 5;
const FIRST_LOCK_SECS: u64 = 30;
const MAX_LOCK_SECS: u64 = 15 * 60;

/// Refuses the check while locked, without looking at the code.
pub fn check(state: &FailureState, now: u64) -> Result<(), ApiError> {
    if state.locked_until > now {
        return Err(ApiError::Throttled {
            retry_after_secs: state.locked_until - now,
        });
    }
    Ok(())
}

/// The state after one more failure at `now`.
pub fn after_failure(state: &FailureState, now: u64) -> FailureState {
    let count = state.count.saturating_add(1);
    let locked_until = if count >= FREE_FAILURES {
        let doublings = (count - FREE_FAILURES).min(16);
        now + (FIRST_LOCK_SECS << doublings).min(MAX_LOCK_SECS)
    } else {
        0
    };
    FailureState {
        count,
        locked_until,
    }
}

/// What one try at a limited code check came to.
pub enum Attempt<T> {
    /// The code was wrong: charge a failure against the state as read, then answer `error`.
    Failed(FailureState, ApiError),
    /// The code was right and the success was committed.
    Done(T),
    /// A commit lost a race with another check: read again and retry.
    Conflict,
}

/// Runs a code check under the failure limit. `attempt` reads the state (and refuses with
/// `check` while locked), tests the code and commits a success conditioned on the state it
/// read; a failure is charged here with a compare-and-set. Every answer that reveals whether
/// a code was right is thus counted exactly once, however many checks race.
pub async fn limited<T, F, Fut>(
    store: &crate::store::Store,
    uuid: &str,
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
            Attempt::Failed(seen, error) => {
                let next = after_failure(&seen, crate::store::now_secs());
                if store.charge_failure(uuid, &seen, &next).await?.is_some() {
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
        let now = 1_000;
        let mut locks = Vec::new();
        for _ in 0..12 {
            state = after_failure(&state, now);
            locks.push(state.locked_until.saturating_sub(now));
        }
        assert_eq!(
            locks,
            vec![0, 0, 0, 0, 30, 60, 120, 240, 480, 900, 900, 900]
        );
        assert_eq!(
            check(&state, now + 899),
            Err(ApiError::Throttled {
                retry_after_secs: 1
            })
        );
        assert_eq!(check(&state, now + 900), Ok(()));
    }
}
