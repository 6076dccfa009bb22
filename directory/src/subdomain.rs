//! Account subdomains: the DNS label that puts an account's scripts at
//! `<script>.<subdomain>.<workers domain>`, unique across accounts.
//!
//! A new account gets one derived from its name (lowercased, other characters turned into
//! `-`), with `-` and the first hex characters of its id appended when that is taken; the
//! account's admins may change it ([`Directory::set_subdomain`]).

use crate::store::{Tx, params};

use crate::database::Directory;
use crate::error::DirectoryError;

/// Longest subdomain (one DNS label).
pub const MAX_SUBDOMAIN_LEN: usize = 63;

/// Why a subdomain is refused: `None` when `subdomain` is a valid label.
pub fn subdomain_problem(subdomain: &str) -> Option<String> {
    if subdomain.is_empty() {
        return Some("is empty; use 1 to 63 lowercase letters, digits or '-'".into());
    }
    if subdomain.len() > MAX_SUBDOMAIN_LEN {
        return Some(format!(
            "is {} characters long; a DNS label has at most {MAX_SUBDOMAIN_LEN}",
            subdomain.len()
        ));
    }
    if let Some(bad) = subdomain
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Some(format!(
            "contains {bad:?}; use only lowercase letters, digits and '-' (e.g. {:?})",
            derive(subdomain)
        ));
    }
    if subdomain.starts_with('-') || subdomain.ends_with('-') {
        return Some("starts or ends with '-'; a DNS label may not".into());
    }
    None
}

/// The label an account named `name` would like: lowercased, every run of other characters
/// turned into one `-`, trimmed to a valid label; `account` when nothing is left.
pub fn derive(name: &str) -> String {
    let mut label = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            label.push(c);
        } else if !label.is_empty() && !label.ends_with('-') {
            label.push('-');
        }
    }
    label.truncate(MAX_SUBDOMAIN_LEN);
    let label = label.trim_end_matches('-');
    if label.is_empty() {
        "account".to_owned()
    } else {
        label.to_owned()
    }
}

/// [`derive`]`(name)`, or when another account holds it, that label with `-` and the first 6
/// (then 12, then all 32) hex characters of `account_id` appended.
pub(crate) fn derive_unique(
    tx: &Tx<'_>,
    name: &str,
    account_id: &str,
) -> Result<String, DirectoryError> {
    let base = derive(name);
    if !taken(tx, &base, account_id)? {
        return Ok(base);
    }
    for suffix_len in [6, 12, 32] {
        let suffix = &account_id[..suffix_len.min(account_id.len())];
        let room = MAX_SUBDOMAIN_LEN - suffix.len() - 1;
        let stem = base[..base.len().min(room)].trim_end_matches('-');
        let candidate = format!("{stem}-{suffix}");
        if !taken(tx, &candidate, account_id)? {
            return Ok(candidate);
        }
    }
    Err(DirectoryError::SubdomainTaken(base))
}

/// Whether an account other than `account_id` holds `subdomain`.
fn taken(tx: &Tx<'_>, subdomain: &str, account_id: &str) -> Result<bool, DirectoryError> {
    Ok(tx
        .query_opt(
            "SELECT 1 FROM accounts WHERE subdomain = ?1 AND account_id <> ?2",
            [subdomain, account_id],
            |_| Ok(()),
        )?
        .is_some())
}

/// Gives every account of a database from before subdomains one: the local account first
/// (named `local`, it gets `local`), then the others, oldest first.
pub(crate) fn backfill(tx: &Tx<'_>) -> Result<(), DirectoryError> {
    let local: Option<String> = tx.query_opt(
        "SELECT value FROM meta WHERE key = 'account_id'",
        params![],
        |row| row.get(0),
    )?;
    let accounts: Vec<(String, String)> = tx.query_map(
        "SELECT account_id, name FROM accounts WHERE subdomain IS NULL
         ORDER BY account_id <> ?1, created_at, account_id",
        [local.unwrap_or_default()],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    for (id, name) in accounts {
        let subdomain = derive_unique(tx, &name, &id)?;
        tx.execute(
            "UPDATE accounts SET subdomain = ?1 WHERE account_id = ?2",
            [&subdomain, &id],
        )?;
    }
    Ok(())
}

impl Directory {
    /// This account's subdomain.
    pub fn subdomain(&self) -> Result<String, DirectoryError> {
        self.read(|conn| {
            conn.query_one(
                "SELECT subdomain FROM accounts WHERE account_id = ?1",
                [self.account_id()],
                |row| row.get(0),
            )
        })
    }

    /// Sets this account's subdomain; refuses an invalid label or one another account holds.
    /// Scripts of the account are then served under the new one only.
    pub fn set_subdomain(&self, subdomain: &str) -> Result<(), DirectoryError> {
        if let Some(problem) = subdomain_problem(subdomain) {
            return Err(DirectoryError::InvalidSubdomain {
                subdomain: subdomain.to_owned(),
                problem,
            });
        }
        self.write(|tx| {
            if taken(tx, subdomain, self.account_id())? {
                return Err(DirectoryError::SubdomainTaken(subdomain.to_owned()));
            }
            tx.execute(
                "UPDATE accounts SET subdomain = ?1 WHERE account_id = ?2",
                [subdomain, self.account_id()],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_dns_labels() {
        for (name, label) in [
            ("local", "local"),
            ("Team B", "team-b"),
            ("  --ACME, Inc.--  ", "acme-inc"),
            ("émile", "mile"),
            ("!!!", "account"),
            ("", "account"),
            (&"x".repeat(70), &"x".repeat(63)),
            (&format!("{}-y", "x".repeat(62)), &"x".repeat(62)),
        ] {
            assert_eq!(derive(name), label, "{name:?}");
            assert_eq!(subdomain_problem(label), None, "{label:?}");
        }
    }

    #[test]
    fn invalid_subdomains_say_what_is_wrong() {
        for (label, problem) in [
            ("", "is empty; use 1 to 63 lowercase letters, digits or '-'"),
            (
                "Team",
                "contains 'T'; use only lowercase letters, digits and '-' (e.g. \"team\")",
            ),
            (
                "a.b",
                "contains '.'; use only lowercase letters, digits and '-' (e.g. \"a-b\")",
            ),
            ("-a", "starts or ends with '-'; a DNS label may not"),
            ("a-", "starts or ends with '-'; a DNS label may not"),
        ] {
            assert_eq!(
                subdomain_problem(label).as_deref(),
                Some(problem),
                "{label:?}"
            );
        }
        assert!(
            subdomain_problem(&"a".repeat(64))
                .unwrap()
                .contains("64 characters long")
        );
        assert_eq!(subdomain_problem(&"a".repeat(63)), None);
        assert_eq!(subdomain_problem("a-1"), None);
    }

    both_backends! {
    #[test]
    fn accounts_get_unique_subdomains_and_may_change_them(state) {
        let dir = state.open();
        assert_eq!(dir.subdomain().unwrap(), "local");
        let a = dir.create_account("Team B").unwrap();
        assert_eq!(a.subdomain, "team-b");
        let b = dir.create_account("team_b").unwrap();
        assert_eq!(b.subdomain, format!("team-b-{}", &b.id[..6]));
        let c = dir.create_account("local").unwrap();
        assert_eq!(c.subdomain, format!("local-{}", &c.id[..6]));

        let view = dir.for_account(&a.id).unwrap().unwrap();
        let err = view.set_subdomain("local").unwrap_err();
        assert!(matches!(err, DirectoryError::SubdomainTaken(ref s) if s == "local"));
        assert_eq!(
            err.to_string(),
            "the subdomain \"local\" is taken by another account; pick another"
        );
        let err = view.set_subdomain("Bad").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid subdomain \"Bad\": contains 'B'; use only lowercase letters, digits and \
             '-' (e.g. \"bad\")"
        );
        // Setting its own subdomain again is no conflict.
        view.set_subdomain("team-b").unwrap();
        view.set_subdomain("blue").unwrap();
        assert_eq!(view.subdomain().unwrap(), "blue");
        // The old one is free again.
        let d = dir.create_account("team b").unwrap();
        assert_eq!(d.subdomain, "team-b");
        let subdomains: Vec<String> = dir
            .list_accounts()
            .unwrap()
            .into_iter()
            .map(|a| a.subdomain)
            .collect();
        assert_eq!(subdomains.len(), 5);
        assert!(subdomains.contains(&"blue".to_owned()));
    }
    }
}
