//! Client subcommands: thin wrappers over `sovra-client` with text or JSON output.

use crate::{AuditCmd, Cmd, Output};
use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use sovra_client::{AuditFilter, Client, Context, KeyInfo, unb64};
use std::io::{Read, Write};
use std::path::PathBuf;

#[derive(Subcommand)]
pub(crate) enum OperatorCmd {
    /// Create the root key and print the unseal shares (once).
    Init {
        #[arg(long, default_value_t = 5)]
        shares: u32,
        #[arg(long, default_value_t = 3)]
        threshold: u32,
        /// The server's one-time init token file (`<data_dir>/init-token`, written at its first
        /// start): proof of being its installer.
        #[arg(long)]
        init_token_file: PathBuf,
        /// Allow a threshold of 1, with which one operator alone unseals.
        #[arg(long)]
        allow_single_share: bool,
    },
    /// Submit one unseal share (argument, or read from stdin).
    Unseal { share: Option<String> },
    /// Drop every key from memory.
    Seal,
    /// Sealed/unsealed and unseal progress.
    Status,
}

#[derive(Subcommand)]
pub(crate) enum KeyCmd {
    Create {
        #[arg(long)]
        name: String,
        /// aes-256-gcm, chacha20-poly1305, hmac-sha256, ed25519, ecdsa-p256, rsa-3072, rsa-4096
        #[arg(long = "type")]
        key_type: String,
        #[arg(long)]
        description: Option<String>,
    },
    List,
    Show {
        id: String,
    },
    Rotate {
        id: String,
    },
    Disable {
        id: String,
    },
    Enable {
        id: String,
    },
    /// Schedule deletion after a waiting period.
    Delete {
        id: String,
        #[arg(long, default_value_t = 30)]
        pending_days: u32,
    },
    CancelDelete {
        id: String,
    },
    /// Let another identity or a role of the org use the key.
    Grant {
        id: String,
        /// The grantee identity's id (`ISSUER#SUBJECT`).
        #[arg(long, conflicts_with = "role", required_unless_present = "role")]
        identity: Option<String>,
        /// Every identity with this role (admin, auditor, key_admin, user).
        #[arg(long)]
        role: Option<String>,
        /// encrypt, decrypt, sign, verify, mac, datakey, reencrypt, read (repeatable).
        #[arg(long = "op", required = true)]
        operations: Vec<String>,
        /// Only with exactly this encryption context, key=value (repeatable).
        #[arg(long = "context-equals", value_parser = parse_kv, conflicts_with = "context_subset")]
        context_equals: Vec<(String, String)>,
        /// Only with a context holding these pairs, key=value (repeatable).
        #[arg(long = "context-subset", value_parser = parse_kv)]
        context_subset: Vec<(String, String)>,
        /// Expire after this many seconds (default: until revoked).
        #[arg(long)]
        expires_in_seconds: Option<u64>,
    },
    /// The key's grants.
    Grants {
        id: String,
    },
    /// Revoke a grant (or, as its grantee, retire it).
    RevokeGrant {
        id: String,
        grant: String,
    },
    /// Change settings (min_decryption_version, description).
    Update {
        id: String,
        #[arg(long)]
        min_decryption_version: Option<u32>,
        #[arg(long)]
        description: Option<String>,
    },
}

#[derive(Args)]
pub(crate) struct EncryptArgs {
    #[arg(long)]
    key: String,
    /// Input file (default stdin).
    #[arg(long = "in")]
    in_file: Option<PathBuf>,
    /// Output file (default stdout).
    #[arg(long = "out")]
    out_file: Option<PathBuf>,
    /// Encryption context entries, key=value (repeatable).
    #[arg(long = "context", value_parser = parse_kv)]
    context: Vec<(String, String)>,
}

#[derive(Args)]
pub(crate) struct DecryptArgs {
    #[arg(long = "in")]
    in_file: Option<PathBuf>,
    #[arg(long = "out")]
    out_file: Option<PathBuf>,
    #[arg(long = "context", value_parser = parse_kv)]
    context: Vec<(String, String)>,
}

#[derive(Args)]
pub(crate) struct SignArgs {
    #[arg(long)]
    key: String,
    #[arg(long = "in")]
    in_file: Option<PathBuf>,
    /// Write the raw signature here (default: print base64).
    #[arg(long = "out")]
    out_file: Option<PathBuf>,
    /// The input is a digest, not the message.
    #[arg(long)]
    digest: bool,
    #[arg(long)]
    algorithm: Option<String>,
}

#[derive(Args)]
pub(crate) struct VerifyArgs {
    #[arg(long)]
    key: String,
    #[arg(long = "in")]
    in_file: Option<PathBuf>,
    /// File holding the raw signature.
    #[arg(long)]
    signature: PathBuf,
    #[arg(long)]
    digest: bool,
    #[arg(long)]
    algorithm: Option<String>,
}

#[derive(Args)]
pub(crate) struct DatakeyArgs {
    #[arg(long)]
    key: String,
    #[arg(long, default_value_t = 256)]
    bits: u32,
    /// Only the encrypted data key.
    #[arg(long)]
    no_plaintext: bool,
    #[arg(long = "context", value_parser = parse_kv)]
    context: Vec<(String, String)>,
}

#[derive(Args)]
pub struct AuditListArgs {
    /// Events by this actor (e.g. `<issuer>#<sub>`).
    #[arg(long)]
    actor: Option<String>,
    /// Events of this action (e.g. `key.encrypt`).
    #[arg(long)]
    action: Option<String>,
    /// success, denied or failure.
    #[arg(long)]
    outcome: Option<String>,
    /// Events at or after this time (RFC 3339).
    #[arg(long)]
    from: Option<String>,
    /// Events before this time (RFC 3339).
    #[arg(long)]
    to: Option<String>,
    /// Events per page (1-1000; server default 100).
    #[arg(long)]
    limit: Option<u32>,
    /// The next page: `next_before_seq` of the previous one.
    #[arg(long)]
    before_seq: Option<u64>,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct AuditHashArgs {
    /// File holding the bearer token (so that it is not on the command line).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Encryption context entries, key=value (repeatable).
    #[arg(long = "context", value_parser = parse_kv)]
    context: Vec<(String, String)>,
}

async fn audit(client: &Client, output: Output, cmd: AuditCmd) -> Result<()> {
    match cmd {
        AuditCmd::Verify { .. } => unreachable!("handled by main"),
        AuditCmd::PublicKey => {
            let pem = client.audit_public_key().await?;
            match output {
                Output::Json => print_json(&json!({"public_key": pem}))?,
                Output::Text => print!("{pem}"),
            }
        }
        AuditCmd::List(a) => {
            let page = client
                .audit_list(&AuditFilter {
                    from: a.from,
                    to: a.to,
                    actor: a.actor,
                    action: a.action,
                    outcome: a.outcome,
                    before_seq: a.before_seq,
                    limit: a.limit,
                })
                .await?;
            match output {
                Output::Json => print_json(&serde_json::to_value(&page)?)?,
                Output::Text => {
                    println!(
                        "{:>8}  {:<24}  {:<32}  {:<20}  {:<44}  {:<8}  error",
                        "seq", "time", "actor", "action", "resource", "outcome"
                    );
                    for e in &page.events {
                        println!(
                            "{:>8}  {:<24}  {:<32}  {:<20}  {:<44}  {:<8}  {}",
                            e.seq,
                            e.time,
                            e.actor,
                            e.action,
                            e.resource,
                            e.outcome,
                            e.error_code.as_deref().unwrap_or("-")
                        );
                    }
                    if let Some(n) = page.next_before_seq {
                        println!("(more: --before-seq {n})");
                    }
                }
            }
        }
        AuditCmd::Export {
            from_seq,
            to_seq,
            out_file,
        } => match out_file {
            Some(p) => {
                let mut f = create_private(&p)?;
                client.audit_export_to(from_seq, to_seq, &mut f).await?;
                f.sync_all()
                    .with_context(|| format!("cannot write {}", p.display()))?;
            }
            None => {
                let mut out = std::io::stdout();
                client.audit_export_to(from_seq, to_seq, &mut out).await?;
            }
        },
        AuditCmd::Hash(a) => {
            let h = match a.token_file {
                Some(p) => {
                    let token = zeroize::Zeroizing::new(
                        std::fs::read_to_string(&p)
                            .with_context(|| format!("cannot read {}", p.display()))?,
                    );
                    client.audit_hash_token(token.trim()).await?
                }
                None => {
                    let ctx: Context = a.context.into_iter().collect();
                    client.audit_hash_context(&ctx).await?
                }
            };
            match output {
                Output::Json => print_json(&serde_json::to_value(&h)?)?,
                Output::Text => println!("{}: {}", h.field, h.hash),
            }
        }
    }
    Ok(())
}

/// A new file only the owner may read (an export names actors and resources).
fn create_private(p: &PathBuf) -> Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(p)
        .with_context(|| format!("cannot create {}", p.display()))
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

fn read_input(p: &Option<PathBuf>) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    match p {
        Some(p) => {
            buf = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?
        }
        None => {
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read stdin")?;
        }
    }
    Ok(buf)
}

fn write_output(p: &Option<PathBuf>, bytes: &[u8]) -> Result<()> {
    match p {
        Some(p) => {
            std::fs::write(p, bytes).with_context(|| format!("cannot write {}", p.display()))
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes)?;
            out.flush()?;
            Ok(())
        }
    }
}

fn print_key(output: Output, k: &KeyInfo) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(k)?),
        Output::Text => {
            println!("id:                     {}", k.id);
            println!("name:                   {}", k.name);
            println!("type:                   {}", k.key_type);
            println!("state:                  {}", k.state);
            println!("versions:               {}", k.latest_version);
            println!("min decryption version: {}", k.min_decryption_version);
            println!("owner:                  {}", k.owner);
            println!("created:                {}", k.created);
            if let Some(r) = &k.rotated {
                println!("rotated:                {r}");
            }
            if let Some(d) = &k.deletion_date {
                println!("deletion date:          {d}");
            }
            if let Some(d) = &k.description {
                println!("description:            {d}");
            }
        }
    }
    Ok(())
}

fn print_json(v: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn print_status(output: Output, s: &sovra_client::SealStatus) -> Result<()> {
    match output {
        Output::Json => print_json(&serde_json::to_value(s)?),
        Output::Text => {
            println!("initialized: {}", s.initialized);
            println!("sealed:      {}", s.sealed);
            if let Some(t) = &s.seal_type {
                println!("seal type:   {t}");
            }
            println!("threshold:   {} of {}", s.threshold, s.shares);
            if s.sealed && s.initialized {
                println!("progress:    {}/{}", s.progress, s.threshold);
            }
            Ok(())
        }
    }
}

pub(crate) async fn run(client: &Client, output: Output, command: Cmd) -> Result<()> {
    match command {
        Cmd::Server { .. } | Cmd::Db(_) | Cmd::Audit(AuditCmd::Verify { .. }) => {
            unreachable!("handled by main")
        }
        Cmd::Audit(a) => audit(client, output, a).await?,
        Cmd::Org(c) => crate::org_cmds::org(client, output, c).await?,
        Cmd::Identity(c) => crate::org_cmds::identity(client, output, c).await?,
        Cmd::Operator(op) => match op {
            OperatorCmd::Init {
                shares,
                threshold,
                init_token_file,
                allow_single_share,
            } => {
                let token = std::fs::read_to_string(&init_token_file).with_context(|| {
                    format!("cannot read the init token {}", init_token_file.display())
                })?;
                let r = client
                    .init(shares, threshold, token.trim(), allow_single_share)
                    .await?;
                match output {
                    Output::Json => {
                        print_json(&json!({"shares": r.shares, "threshold": r.threshold}))?
                    }
                    Output::Text => {
                        for (i, s) in r.shares.iter().enumerate() {
                            println!("Unseal share {}: {s}", i + 1);
                        }
                        println!(
                            "\nSovra is initialized and sealed. These {} shares are shown once: give each to a \
                             different operator. Any {} of them unseal (`sovra operator unseal`).",
                            r.shares.len(),
                            r.threshold
                        );
                    }
                }
            }
            OperatorCmd::Unseal { share } => {
                let share = match share {
                    Some(s) => s,
                    None => {
                        let mut s = String::new();
                        std::io::stdin()
                            .read_line(&mut s)
                            .context("cannot read share from stdin")?;
                        s
                    }
                };
                let st = client.unseal(share.trim()).await?;
                print_status(output, &st)?;
            }
            OperatorCmd::Seal => print_status(output, &client.seal().await?)?,
            OperatorCmd::Status => print_status(output, &client.seal_status().await?)?,
        },
        Cmd::Key(k) => {
            let info = match k {
                KeyCmd::Create {
                    name,
                    key_type,
                    description,
                } => {
                    client
                        .create_key(&name, &key_type, description.as_deref())
                        .await?
                }
                KeyCmd::List => {
                    let keys = client.list_keys().await?;
                    match output {
                        Output::Json => print_json(&serde_json::to_value(&keys)?)?,
                        Output::Text => {
                            println!(
                                "{:<36}  {:<20}  {:<17}  {:<16}  versions",
                                "id", "name", "type", "state"
                            );
                            for k in keys {
                                println!(
                                    "{:<36}  {:<20}  {:<17}  {:<16}  {}",
                                    k.id, k.name, k.key_type, k.state, k.latest_version
                                );
                            }
                        }
                    }
                    return Ok(());
                }
                KeyCmd::Show { id } => client.get_key(&id).await?,
                KeyCmd::Rotate { id } => client.key_action(&id, "rotate").await?,
                KeyCmd::Disable { id } => client.key_action(&id, "disable").await?,
                KeyCmd::Enable { id } => client.key_action(&id, "enable").await?,
                KeyCmd::Delete { id, pending_days } => {
                    client.schedule_deletion(&id, pending_days).await?
                }
                KeyCmd::CancelDelete { id } => client.key_action(&id, "cancel-deletion").await?,
                KeyCmd::Grant {
                    id,
                    identity,
                    role,
                    operations,
                    context_equals,
                    context_subset,
                    expires_in_seconds,
                } => {
                    let mut body = json!({
                        "grantee": {"identity": identity, "role": role},
                        "operations": operations,
                        "expires_in_seconds": expires_in_seconds,
                    });
                    let map =
                        |pairs: Vec<(String, String)>| -> Context { pairs.into_iter().collect() };
                    if !context_equals.is_empty() {
                        body["constraints"] =
                            json!({"encryption_context_equals": map(context_equals)});
                    } else if !context_subset.is_empty() {
                        body["constraints"] =
                            json!({"encryption_context_subset": map(context_subset)});
                    }
                    let g = client.create_grant(&id, &body).await?;
                    match output {
                        Output::Json => print_json(&g)?,
                        Output::Text => println!("{}", g["id"].as_str().unwrap_or_default()),
                    }
                    return Ok(());
                }
                KeyCmd::Grants { id } => {
                    let list = client.list_grants(&id).await?;
                    match output {
                        Output::Json => print_json(&list)?,
                        Output::Text => {
                            for g in list["grants"].as_array().into_iter().flatten() {
                                let grantee = &g["grantee"];
                                let who = grantee["identity"]
                                    .as_str()
                                    .map(str::to_string)
                                    .or_else(|| {
                                        grantee["role"].as_str().map(|r| format!("role:{r}"))
                                    })
                                    .unwrap_or_default();
                                let ops: Vec<&str> = g["operations"]
                                    .as_array()
                                    .into_iter()
                                    .flatten()
                                    .filter_map(|o| o.as_str())
                                    .collect();
                                println!(
                                    "{}\t{who}\t{}\t{}",
                                    g["id"].as_str().unwrap_or_default(),
                                    ops.join(","),
                                    g["expires"].as_str().unwrap_or("-")
                                );
                            }
                        }
                    }
                    return Ok(());
                }
                KeyCmd::RevokeGrant { id, grant } => {
                    client.revoke_grant(&id, &grant).await?;
                    if output == Output::Json {
                        print_json(&json!({"revoked": grant}))?;
                    }
                    return Ok(());
                }
                KeyCmd::Update {
                    id,
                    min_decryption_version,
                    description,
                } => {
                    client
                        .update_key(&id, min_decryption_version, description.as_deref())
                        .await?
                }
            };
            print_key(output, &info)?;
        }
        Cmd::Encrypt(a) => {
            let ctx: Context = a.context.into_iter().collect();
            let pt = read_input(&a.in_file)?;
            let r = client.encrypt(&a.key, &pt, &ctx).await?;
            match output {
                Output::Json => print_json(&serde_json::to_value(&r)?)?,
                Output::Text => write_output(&a.out_file, &unb64(&r.ciphertext)?)?,
            }
        }
        Cmd::Decrypt(a) => {
            let ctx: Context = a.context.into_iter().collect();
            let ct = read_input(&a.in_file)?;
            let r = client.decrypt(&ct, &ctx).await?;
            match output {
                Output::Json => print_json(&serde_json::to_value(&r)?)?,
                Output::Text => write_output(&a.out_file, &unb64(&r.plaintext)?)?,
            }
        }
        Cmd::Sign(a) => {
            let data = read_input(&a.in_file)?;
            let r = client
                .sign(&a.key, &data, a.digest, a.algorithm.as_deref())
                .await?;
            match (output, &a.out_file) {
                (Output::Json, _) => print_json(&serde_json::to_value(&r)?)?,
                (Output::Text, Some(_)) => write_output(&a.out_file, &unb64(&r.signature)?)?,
                (Output::Text, None) => println!("{}", r.signature),
            }
        }
        Cmd::Verify(a) => {
            let data = read_input(&a.in_file)?;
            let sig = std::fs::read(&a.signature)
                .with_context(|| format!("cannot read {}", a.signature.display()))?;
            let valid = client
                .verify(&a.key, &data, a.digest, &sig, a.algorithm.as_deref())
                .await?;
            match output {
                Output::Json => print_json(&json!({"valid": valid}))?,
                Output::Text => println!("{}", if valid { "valid" } else { "INVALID" }),
            }
            if !valid {
                bail!("signature is not valid");
            }
        }
        Cmd::Datakey(a) => {
            let ctx: Context = a.context.into_iter().collect();
            let r = client
                .data_key(&a.key, a.bits, !a.no_plaintext, &ctx)
                .await?;
            match output {
                Output::Json => print_json(&serde_json::to_value(&r)?)?,
                Output::Text => {
                    if let Some(p) = &r.plaintext {
                        println!("plaintext:  {p}");
                    }
                    println!("ciphertext: {}", r.ciphertext);
                    println!("key:        {} (version {})", r.key_id, r.key_version);
                }
            }
        }
        Cmd::PublicKey { id } => {
            let pem = client.public_key(&id).await?;
            match output {
                Output::Json => print_json(&json!({"public_key": pem}))?,
                Output::Text => print!("{pem}"),
            }
        }
    }
    Ok(())
}
