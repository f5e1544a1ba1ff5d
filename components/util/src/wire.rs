//! Conventions of the client protocol that its messages cannot carry as fields.

/// Starts the `error` string of a write whose outcome the server cannot know (a proposal
/// that timed out, or whose peer went away before it applied). The write may or may not
/// have been applied; a client must report it as undetermined, never retry it blindly.
pub const UNDETERMINED: &str = "undetermined: ";
