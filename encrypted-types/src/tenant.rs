//! Tenant identifiers.

use std::fmt;
use std::sync::Arc;

/// Identifies a tenant (a clinic, a customer) that owns its own data keys.
///
/// A tenant id is not secret: it appears in error messages and in the authenticated context of
/// every value sealed for the tenant. It is cheap to clone (a shared string).
///
/// ```
/// use encrypted_types::TenantId;
/// let a = TenantId::from("clinic-a");
/// assert_eq!(a.as_str(), "clinic-a");
/// assert_eq!(TenantId::from(42_i64).as_str(), "42");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for TenantId {
    fn from(s: &str) -> Self {
        Self(Arc::from(s))
    }
}

impl From<String> for TenantId {
    fn from(s: String) -> Self {
        Self(Arc::from(s))
    }
}

macro_rules! tenant_from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for TenantId {
            fn from(n: $t) -> Self {
                Self(Arc::from(n.to_string()))
            }
        }
    )*};
}
tenant_from_int!(i32, i64, u32, u64);

/// Renders an optional tenant for messages.
pub(crate) fn describe(tenant: Option<&TenantId>) -> String {
    tenant.map_or_else(|| "(none)".to_owned(), ToString::to_string)
}
