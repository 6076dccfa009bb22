//! The directory API as the CLI reaches it: `--api` / `WVPC_API`, the bearer token from
//! `WVPC_API_TOKEN`, and the account (`--account` / `WVPC_ACCOUNT_ID`, or the token's own).

use anyhow::Context as _;
use http::Method;
use serde_json::Value;
use wvpc_directory::api::client::ApiClient;

/// Where the API is and who calls it.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Directory API to talk to instead of the local --state (e.g. http://127.0.0.1:8788);
    /// the bearer token comes from WVPC_API_TOKEN
    #[arg(long, global = true, env = "WVPC_API", value_name = "URL")]
    pub api: Option<String>,
    /// Account to act on with --api [default: the API token's account]
    #[arg(long, global = true, env = "WVPC_ACCOUNT_ID", value_name = "ID")]
    pub account: Option<String>,
}

/// A connected API client acting on one account.
pub struct Remote {
    /// The client.
    pub client: ApiClient,
    /// The account id in every path.
    pub account: String,
}

impl Remote {
    /// Connects (token from `WVPC_API_TOKEN`) and settles the account.
    pub async fn connect(api: &str, account: Option<&str>) -> anyhow::Result<Remote> {
        let token = std::env::var("WVPC_API_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        if token.is_none() {
            anyhow::bail!(
                "--api {api} needs an API token in WVPC_API_TOKEN (create one with \
                 `wvpc token create --role admin` on the directory's --state)"
            );
        }
        let client = ApiClient::new(api, token)?;
        let account = match account {
            Some(account) => account.to_owned(),
            None => {
                let accounts = client
                    .call(Method::GET, "/accounts", None)
                    .await
                    .context("finding the API token's account")?;
                match accounts.as_array().map(Vec::as_slice) {
                    Some([only]) => only["id"].as_str().unwrap_or_default().to_owned(),
                    _ => anyhow::bail!(
                        "the API token sees several accounts or none; pass --account <ID>"
                    ),
                }
            }
        };
        Ok(Remote { client, account })
    }

    /// `/accounts/{account}/{rest}`.
    pub fn path(&self, rest: &str) -> String {
        format!("/accounts/{}/{rest}", self.account)
    }

    /// A JSON call on the account; the envelope's `result`.
    pub async fn call(
        &self,
        method: Method,
        rest: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        Ok(self.client.call(method, &self.path(rest), body).await?)
    }

    /// Every page of a list.
    pub async fn list_all(&self, rest: &str) -> anyhow::Result<Vec<Value>> {
        let mut items = Vec::new();
        let separator = if rest.contains('?') { '&' } else { '?' };
        for page in 1.. {
            let (result, info) = self
                .client
                .call_paged(
                    Method::GET,
                    &self.path(&format!("{rest}{separator}page={page}&per_page=1000")),
                    None,
                )
                .await?;
            if let Value::Array(batch) = result {
                items.extend(batch);
            }
            match info {
                Some(info) if info.page < info.total_pages => continue,
                _ => break,
            }
        }
        Ok(items)
    }
}

/// The problems of an API refusal that is only validation errors (each message
/// `<field path>: <what is wrong>`), for showing them as a local refusal would; `None` for any
/// other failure.
pub fn validation_problems(
    err: &wvpc_directory::api::client::ClientError,
) -> Option<Vec<wvpc_directory::validation::Problem>> {
    use wvpc_directory::api::client::ClientError;
    use wvpc_directory::api::envelope;
    let ClientError::Api(err) = err else {
        return None;
    };
    if !err
        .errors
        .iter()
        .all(|e| e.code == envelope::code::VALIDATION)
    {
        return None;
    }
    let problems = err
        .errors
        .iter()
        .map(|e| {
            let (path, message) = e.message.split_once(": ").unwrap_or(("", &e.message));
            wvpc_directory::validation::Problem {
                path: path.to_owned(),
                message: message.to_owned(),
            }
        })
        .collect();
    Some(problems)
}
