use std::fmt;
use std::sync::Arc;

/// The name of a downstream (or of a layer instance): the value of the `downstream`
/// metric label and the word used in logs and rejections.
///
/// Names are checked when created, because they become label values: 1 to 64
/// characters of ASCII letters, digits, `_`, `-` and `.`. Cloning is cheap (an `Arc`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

/// A refused [`Name`], saying why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name was empty.
    #[error("name is empty")]
    Empty,
    /// The name was longer than 64 characters.
    #[error("name {0:?} is longer than 64 characters")]
    TooLong(String),
    /// The name held a character outside `[A-Za-z0-9_.-]`.
    #[error("name {name:?} has {ch:?}; only ASCII letters, digits, '_', '-' and '.' are allowed")]
    BadChar {
        /// The refused name.
        name: String,
        /// The first character that is not allowed.
        ch: char,
    },
}

impl Name {
    /// The longest name accepted.
    pub const MAX_LEN: usize = 64;

    /// Checks and wraps `name`.
    pub fn new(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > Self::MAX_LEN {
            return Err(NameError::TooLong(name.to_owned()));
        }
        if let Some(ch) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        {
            return Err(NameError::BadChar {
                name: name.to_owned(),
                ch,
            });
        }
        Ok(Self(Arc::from(name)))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for Name {
    type Error = NameError;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_label_safe_names_only() {
        assert_eq!(
            Name::new("customer-v2.eu_1").unwrap().as_str(),
            "customer-v2.eu_1"
        );
        assert_eq!(Name::new(""), Err(NameError::Empty));
        assert!(matches!(
            Name::new(&"a".repeat(65)),
            Err(NameError::TooLong(_))
        ));
        let err = Name::new("cust omer").unwrap_err();
        assert_eq!(
            err.to_string(),
            "name \"cust omer\" has ' '; only ASCII letters, digits, '_', '-' and '.' are allowed"
        );
    }
}
