//! The protocol version that peers compare before they talk.

/// Bumped whenever a `.proto` change is not backward-compatible. Registration
/// (raylet → head, driver → head) refuses a peer whose version differs, naming
/// both versions.
pub const PROTOCOL_VERSION: u32 = 3;

/// Error returned by [`check_protocol_version`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "protocol version mismatch: {peer} speaks photon protocol v{theirs}, this process speaks v{ours}; \
     run the same photon release on every node"
)]
pub struct VersionMismatch {
    /// Who the peer is (e.g. "raylet on 10.0.0.3:7000").
    pub peer: String,
    /// The peer's version.
    pub theirs: u32,
    /// Our version.
    pub ours: u32,
}

/// Checks a peer's announced protocol version against ours.
pub fn check_protocol_version(peer: &str, theirs: u32) -> Result<(), VersionMismatch> {
    if theirs == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(VersionMismatch {
            peer: peer.to_string(),
            theirs,
            ours: PROTOCOL_VERSION,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_names_both_versions_and_peer() {
        assert!(check_protocol_version("head", PROTOCOL_VERSION).is_ok());
        let err = check_protocol_version("raylet 127.0.0.1:9", PROTOCOL_VERSION + 1).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("raylet 127.0.0.1:9"), "{msg}");
        assert!(msg.contains(&format!("v{}", PROTOCOL_VERSION + 1)), "{msg}");
        assert!(msg.contains(&format!("v{PROTOCOL_VERSION}")), "{msg}");
    }
}
