//! `wvpc token create|list|delete` and `wvpc account create|list|subdomain`: API tokens and
//! accounts, managed on the local `--state` (this is how the first Admin token is made).
//! `wvpc account subdomain` also works over `--api`, on the API token's account.

use std::io::Write;

use anyhow::Context as _;
use http::Method;
use uuid::Uuid;
use wvpc_directory::{Directory, Role};

use crate::UsageError;
use crate::remote::{ApiArgs, Remote};
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
        /// A label for the account [default: account]
        #[arg(value_name = "NAME", conflicts_with = "name_flag")]
        name: Option<String>,
        /// The same as NAME
        #[arg(long = "name", value_name = "NAME")]
        name_flag: Option<String>,
        /// Its subdomain: scripts are served at <script>.<subdomain>.<workers domain>
        /// [default: derived from the name]
        #[arg(long, value_name = "LABEL")]
        subdomain: Option<String>,
        /// Print {"id","name","subdomain","created_at"} as JSON
        #[arg(long)]
        json: bool,
    },
    /// List accounts with their subdomains
    List,
    /// Print an account's subdomain, or change it with --set (with --api: the API token's
    /// account, and --set needs an admin token)
    Subdomain {
        /// The new subdomain: 1 to 63 lowercase letters, digits and '-'
        #[arg(long, value_name = "LABEL")]
        set: Option<String>,
        /// Account [default: the state's own account]
        #[arg(long = "for-account", value_name = "ID")]
        account: Option<String>,
    },
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
pub fn run(
    command: TokenCommand,
    state: &crate::StateDir,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let dir = state.open_directory()?;
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
pub async fn run_account(
    command: AccountCommand,
    state: &crate::StateDir,
    api: &ApiArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    if let (AccountCommand::Subdomain { set, account }, Some(url)) = (&command, &api.api) {
        anyhow::ensure!(
            account.is_none(),
            UsageError(
                "with --api, `wvpc account subdomain` acts on the API token's account (or \
                 --account); --for-account is for the local --state"
                    .into()
            )
        );
        let remote = Remote::connect(url, api.account.as_deref()).await?;
        let result = match set {
            Some(label) => remote
                .call(
                    Method::PUT,
                    "workers/subdomain",
                    Some(&serde_json::json!({ "subdomain": label })),
                )
                .await
                .context("setting the account's subdomain")?,
            None => remote
                .call(Method::GET, "workers/subdomain", None)
                .await
                .context("reading the account's subdomain")?,
        };
        let subdomain = result["subdomain"].as_str().unwrap_or_default();
        return print_subdomain(out, &remote.account, subdomain, set.is_some());
    }
    let dir = state.open_directory()?;
    match command {
        AccountCommand::Create {
            name,
            name_flag,
            subdomain,
            json,
        } => {
            let name = name.or(name_flag).unwrap_or_else(|| "account".to_owned());
            let account = dir.create_account_with_subdomain(&name, subdomain.as_deref())?;
            if json {
                writeln!(out, "{}", serde_json::to_string(&account)?)?;
            } else {
                writeln!(out, "{}", account.id)?;
            }
        }
        AccountCommand::List => {
            let rows: Vec<Vec<String>> = dir
                .list_accounts()?
                .into_iter()
                .map(|a| {
                    vec![
                        a.id,
                        a.name,
                        a.subdomain,
                        super::tunnel::short_time(&a.created_at),
                    ]
                })
                .collect();
            write!(
                out,
                "{}",
                table::render(&["ID", "NAME", "SUBDOMAIN", "CREATED"], &rows)
            )?;
        }
        AccountCommand::Subdomain { set, account } => {
            let dir = account_view(dir, account.as_deref())?;
            if let Some(label) = &set {
                dir.set_subdomain(label)?;
            }
            print_subdomain(out, dir.account_id(), &dir.subdomain()?, set.is_some())?;
        }
    }
    Ok(())
}

/// The subdomain alone (for scripts), or after a change, where scripts are now served.
fn print_subdomain(
    out: &mut (dyn Write + Send),
    account: &str,
    subdomain: &str,
    changed: bool,
) -> anyhow::Result<()> {
    if changed {
        writeln!(
            out,
            "✅ Account {account} now serves its scripts at <script>.{subdomain}.{} (the suffix is \
             the runtimes' --workers-domain)",
            super::deploy::DEFAULT_WORKERS_DOMAIN
        )?;
    } else {
        writeln!(out, "{subdomain}")?;
    }
    Ok(())
}
