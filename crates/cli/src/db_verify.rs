//! `sovra db verify`: the offline check of the stored rows (needs no server, needs the unseal
//! material, since the row-MAC key exists only while unsealed). See
//! [`sovra_core::Kms::verify_rows`].

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sovra_crypto::SecretBytes;
use std::path::PathBuf;

pub(crate) struct VerifyArgs {
    pub database_url: String,
    pub unseal_key_file: Option<PathBuf>,
    pub share_files: Vec<PathBuf>,
    pub adopt_unsigned: bool,
    pub checkpoint_interval_seconds: u64,
    pub json: bool,
}

fn read_base64(path: &PathBuf, what: &str) -> Result<SecretBytes> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| anyhow::anyhow!("{} is not a base64 {what}", path.display()))?;
    Ok(SecretBytes::new(bytes))
}

pub(crate) async fn run(args: VerifyArgs) -> Result<()> {
    let store = sovra_store::open(&args.database_url).await?;
    let kms = sovra_core::Kms::new(store, sovra_core::kms::KmsConfig::default()).await?;
    if !kms.seal_status().initialized {
        bail!("the database holds no initialized Sovra");
    }
    match (&args.unseal_key_file, args.share_files.is_empty()) {
        (Some(file), true) => kms
            .unseal_with_key(&read_base64(file, "unseal key")?)
            .await
            .context("the unseal key does not open this database's root key")?,
        (None, false) => {
            for file in &args.share_files {
                kms.submit_unseal_share(read_base64(file, "unseal share")?)
                    .await
                    .with_context(|| format!("share {}", file.display()))?;
            }
        }
        _ => bail!("give the unseal material: --unseal-key-file, or --share-file once per share"),
    }
    if !kms.is_unsealed() {
        let st = kms.seal_status();
        bail!(
            "{} of {} shares given: not enough to unseal",
            st.progress,
            st.threshold
        );
    }
    let report = kms
        .verify_rows(
            args.adopt_unsigned,
            std::time::Duration::from_secs(args.checkpoint_interval_seconds),
        )
        .await?;
    if args.json {
        let findings: Vec<_> = report
            .findings
            .iter()
            .map(|f| serde_json::json!({"subject": f.subject, "fatal": f.fatal, "problem": f.problem}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "intact": report.intact(),
                "keys_checked": report.keys_checked,
                "adopted": report.adopted,
                "audit_events_read": report.audit_events_read,
                "findings": findings,
            })
        );
    } else {
        for f in &report.findings {
            let level = if f.fatal { "ERROR" } else { "warning" };
            println!("{level}: {}: {}", f.subject, f.problem);
        }
        println!(
            "{} key rows checked against {} audit events{}",
            report.keys_checked,
            report.audit_events_read,
            if report.adopted > 0 {
                format!(", {} unsigned rows adopted", report.adopted)
            } else {
                String::new()
            }
        );
    }
    if !report.intact() {
        bail!("the database is NOT intact");
    }
    if !args.json {
        println!("database intact");
    }
    Ok(())
}
