//! `smtp-oauth-relay import-tokens [--from FILE] [--overwrite]`: moving from one relay to
//! several replicas (issue 16) without consenting again. Copies the grants of the token
//! store file (`[tokens] path`, decrypted with `[tokens] key_file` when set) into the
//! shared store in Redis (`[state] backend = "redis"`). A grant Redis already holds is
//! newer than any file (the replicas rotate it there), so it is kept unless `--overwrite`.
//! Prints what it did per asset, never a token.

use std::path::PathBuf;

use crate::cli::error::CliError;
use crate::cli::load_config;
use crate::credentials::store::TokenStore;
use crate::oauth::token::TokenManager;

pub async fn import_tokens(
    config_path: PathBuf,
    from: Option<PathBuf>,
    overwrite: bool,
) -> Result<(), CliError> {
    let config = load_config(&config_path)?;
    let tokens = TokenManager::new(&config)?;
    let Some(shared) = tokens.shared() else {
        return Err(CliError::config(
            "import-tokens copies the token store file into Redis: set [state] backend = \"redis\" first",
        ));
    };
    let path = from.unwrap_or_else(|| config.tokens.path.clone());
    let file = TokenStore::new(path.clone(), config.tokens.key.clone());
    let entries = file
        .load()
        .map_err(|err| CliError::failed(format!("cannot read {}: {err}", path.display())))?;
    let redis = shared.tokens();
    let (mut copied, mut kept, mut failed) = (0, 0, 0);
    for (asset, entry) in entries {
        let Some(configured) = config.asset(&asset) else {
            println!("asset {asset}: not in the config; skipped");
            continue;
        };
        if !configured.uses_store() {
            println!(
                "asset {asset}: its refresh token does not come from the token store; skipped"
            );
            continue;
        }
        let present = match redis.get(&asset).await {
            Ok(present) => present.is_some(),
            Err(err) => {
                println!("asset {asset}: cannot read Redis: {err}");
                failed += 1;
                continue;
            }
        };
        if present && !overwrite {
            println!(
                "asset {asset}: Redis already holds a grant (newer than the file); kept (--overwrite replaces it)"
            );
            kept += 1;
            continue;
        }
        match redis.put(&asset, entry).await {
            Ok(()) => {
                println!("asset {asset}: copied to {}", redis.describe(&asset));
                copied += 1;
            }
            Err(err) => {
                println!("asset {asset}: not copied: {err}");
                failed += 1;
            }
        }
    }
    println!(
        "{copied} copied, {kept} kept, {failed} failed (from {})",
        path.display()
    );
    if failed > 0 {
        return Err(CliError::Reported);
    }
    Ok(())
}
