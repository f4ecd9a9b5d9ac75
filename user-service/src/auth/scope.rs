//! Scopes: what a service client may do.

use std::fmt;

/// A permission a call may need. Scopes are independent: `admin` does not
/// imply `read` or `write`; a client that needs all three lists all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Reads: `Get*`, `List*`, `Check*`.
    Read,
    /// Writes: creating, changing and deleting users and their data.
    Write,
    /// Operator actions such as `ResetOnboarding`.
    Admin,
    /// The change log (`WatchChanges`, `ListChanges`), which carries
    /// personal data.
    Audit,
}

impl Scope {
    /// The scope's name in the tokens file and in errors.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
            Self::Audit => "audit",
        }
    }

    const fn bit(self) -> u8 {
        match self {
            Self::Read => 1,
            Self::Write => 2,
            Self::Admin => 4,
            Self::Audit => 8,
        }
    }

    pub(super) fn parse(text: &str) -> Option<Self> {
        match text {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "admin" => Some(Self::Admin),
            "audit" => Some(Self::Audit),
            _ => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    /// Whether `scope` is in the set.
    pub const fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// The set with `scope` added.
    #[must_use]
    pub const fn with(self, scope: Scope) -> Self {
        Self(self.0 | scope.bit())
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        iter.into_iter().fold(Self::default(), Self::with)
    }
}
