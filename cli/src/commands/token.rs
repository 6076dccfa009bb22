//! `wvpc token create|list|delete` and `wvpc account create|list`: API tokens and accounts,
//! managed on the local `--state` (this is how the first Admin token is made).

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;
use uuid::Uuid;
use wvpc_directory::{Directory, Role};

use crate::table;

/// `wvpc token …`
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create an API token; its secret is printed once
    Create {
        /// What the token may do
        #[arg(long, value_enum)]
        role: RoleArg,
        /// A label for the token
        #[arg(long, default_value = "wvpc")]
        name: String,
        /// Limit a bind token to these services (repeat the flag) [default: every service]
        #[arg(long = "service", value_name = "UUID")]
        services: Vec<Uuid>,
        /// Account of the token [default: the state's own account]
        #[arg(long = "for-account", value_name = "ID")]
        account: Option<String>,
        /// Print {"id","name","role","account_id","token"} as JSON
        #[arg(long)]
        json: bool,
    },
    /// List the account's tokens (never their secrets)
    List {
        /// Account [default: the state's own account]
        #[arg(long = "for-account", value_name = "ID")]
        account: Option<String>,
    },
    /// Revoke a token
    Delete {
        /// Token id
        id: Uuid,
        /// Account [default: the state's own account]
        #[arg(long = "for-account", value_name = "ID")]
        account: Option<String>,
    },
}

/// `wvpc account …`
#[derive(Debug, clap::Subcommand)]
pub enum AccountCommand {
    /// Create another account (prints its id)
    Create {
        /// A label for the account
        #[arg(long, default_value = "account")]
        name: String,
    },
    /// List accounts
    List,
}

/// `--role`
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    /// List and read
    Read,
    /// Read, and deploy scripts that bind services
    Bind,
    /// Everything
    Admin,
}

impl RoleArg {
    fn role(self) -> Role {
        match self {
            RoleArg::Read => Role::Read,
            RoleArg::Bind => Role::Bind,
            RoleArg::Admin => Role::Admin,
        }
    }
}

fn account_view(dir: Directory, account: Option<&str>) -> anyhow::Result<Directory> {
    match account {
        None => Ok(dir),
        Some(id) => dir.for_account(id)?.with_context(|| {
            format!("no account {id:?} in this directory; `wvpc account list` shows them")
        }),
    }
}

/// Runs a token subcommand.
pub fn run(command: TokenCommand, state: &Path, out: &mut dyn Write) -> anyhow::Result<()> {
    let dir = Directory::open(state)?;
    match command {
        TokenCommand::Create {
            role,
            name,
            services,
            account,
            json,
        } => {
            let dir = account_view(dir, account.as_deref())?;
            let scope = (!services.is_empty()).then_some(services);
            let (token, secret) = dir.create_token(&name, role.role(), scope)?;
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({
                        "id": token.id,
                        "name": token.name,
                        "role": token.role,
                        "account_id": token.account_id,
                        "token": secret,
                    })
                )?;
                return Ok(());
            }
            writeln!(
                out,
                "✅ Created API token {:?} (role {}) for account {}:\n\n    {secret}\n\n\
                 It is shown only now; keep it, e.g. export WVPC_API_TOKEN={secret}",
                token.name, token.role, token.account_id
            )?;
            Ok(())
        }
        TokenCommand::List { account } => {
            let dir = account_view(dir, account.as_deref())?;
            let rows: Vec<Vec<String>> = dir
                .list_tokens()?
                .into_iter()
                .map(|t| {
                    vec![
                        t.id.to_string(),
                        t.name,
                        t.role.to_string(),
                        t.services.map_or_else(
                            || "all".to_owned(),
                            |s| s.iter().map(Uuid::to_string).collect::<Vec<_>>().join(","),
                        ),
                        super::tunnel::short_time(&t.created_at),
                    ]
                })
                .collect();
            write!(
                out,
                "{}",
                table::render(&["ID", "NAME", "ROLE", "SERVICES", "CREATED"], &rows)
            )?;
            Ok(())
        }
        TokenCommand::Delete { id, account } => {
            let dir = account_view(dir, account.as_deref())?;
            anyhow::ensure!(
                dir.delete_token(id)?,
                "no API token {id} in account {}",
                dir.account_id()
            );
            writeln!(out, "✅ Revoked API token {id}")?;
            Ok(())
        }
    }
}

/// Runs an account subcommand.
pub fn run_account(
    command: AccountCommand,
    state: &Path,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let dir = Directory::open(state)?;
    match command {
        AccountCommand::Create { name } => {
            let account = dir.create_account(&name)?;
            writeln!(out, "{}", account.id)?;
        }
        AccountCommand::List => {
            let rows: Vec<Vec<String>> = dir
                .list_accounts()?
                .into_iter()
                .map(|a| vec![a.id, a.name, super::tunnel::short_time(&a.created_at)])
                .collect();
            write!(out, "{}", table::render(&["ID", "NAME", "CREATED"], &rows))?;
        }
    }
    Ok(())
}
