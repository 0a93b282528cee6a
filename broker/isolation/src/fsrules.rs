//! Landlock filesystem rules, applied in the kernel process after the root
//! is built: read and execute where code and libraries live, read-write only
//! where the sandbox may write. No network rules: ipykernel binds an internal
//! pipe on `tcp://127.0.0.1:*` and silently loses subprocess output without it
//! (the empty network namespace is the network boundary).

use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    ABI,
};
use std::path::PathBuf;

/// Errors applying the rules.
#[derive(Debug, thiserror::Error)]
pub enum FsRulesError {
    #[error("landlock: {0}")]
    Landlock(#[from] landlock::RulesetError),
    #[error("landlock is not enforced by this kernel")]
    NotEnforced,
}

/// Restricts the calling thread (and what it execs) to the sandbox's paths.
pub fn apply(read_only: &[PathBuf], read_write: &[PathBuf]) -> Result<(), FsRulesError> {
    let abi = ABI::V5;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .create()?
        // Listing directories is harmless and expected (`os.listdir('/')`).
        .add_rules(path_beneath_rules(
            ["/"],
            landlock::BitFlags::from(AccessFs::ReadDir),
        ))?
        .add_rules(path_beneath_rules(read_only, AccessFs::from_read(abi)))?
        .add_rules(path_beneath_rules(read_write, AccessFs::from_all(abi)))?
        .restrict_self()?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err(FsRulesError::NotEnforced);
    }
    Ok(())
}
