//! `sovra`: the server (`sovra server`), the client commands that talk HTTPS to it, and
//! offline tools.

mod client_cmds;
mod db_verify;
mod org_cmds;

/// mimalloc rather than glibc's allocator: in a profile of the audited encrypt path, glibc's
/// malloc and free (fastbin consolidation above all) took about a fifth of the server's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "sovra", version, about = "Sovra: sovereign key management")]
struct Cli {
    /// Output format of client commands.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Server address (https://host:port).
    #[arg(
        long,
        global = true,
        env = "SOVRA_ADDR",
        default_value = "https://127.0.0.1:8200"
    )]
    addr: String,
    /// Bearer token (JWT or the dev token).
    #[arg(long, global = true, env = "SOVRA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM file of the CA (or self-signed certificate) to trust.
    #[arg(long, global = true, env = "SOVRA_CACERT")]
    cacert: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Sovra server.
    Server {
        /// Configuration file (sovra.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Dev mode: embedded SQLite, dev seal, self-signed TLS, dev token. Never in production.
        #[arg(long)]
        dev: bool,
        /// Data directory (database and dev files).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Seal management.
    #[command(subcommand)]
    Operator(client_cmds::OperatorCmd),
    /// Organizations (server operators).
    #[command(subcommand)]
    Org(org_cmds::OrgCmd),
    /// Identities of your organization (its admins and auditors).
    #[command(subcommand)]
    Identity(org_cmds::IdentityCmd),
    /// Key lifecycle.
    #[command(subcommand)]
    Key(client_cmds::KeyCmd),
    /// Encrypt a file or stdin; writes the binary ciphertext.
    Encrypt(client_cmds::EncryptArgs),
    /// Decrypt a ciphertext file or stdin; writes the plaintext.
    Decrypt(client_cmds::DecryptArgs),
    /// Sign a file or stdin (message, or a digest with --digest).
    Sign(client_cmds::SignArgs),
    /// Verify a signature.
    Verify(client_cmds::VerifyArgs),
    /// Generate a data key.
    Datakey(client_cmds::DatakeyArgs),
    /// The audit log: read, export, hash lookups (server) and offline verification.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Print a signing key's public key (SPKI PEM).
    PublicKey {
        /// Key id.
        id: String,
    },
    /// Database administration (needs no server).
    #[command(subcommand)]
    Db(DbCmd),
}

#[derive(Subcommand)]
enum DbCmd {
    /// Apply pending schema migrations. On PostgreSQL run it as the owner of the tables; the
    /// server's service role may not change the schema (docs/postgres.md).
    Migrate {
        /// Database URL (sqlite://path or postgres://owner@host/db).
        #[arg(long, env = "SOVRA_DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// Check every key row's MAC, and its revision and state against the audit log (a row
    /// edited or replayed outside Sovra is named); exits non-zero if anything is wrong. Needs
    /// the unseal material, since the row-MAC key exists only while unsealed.
    Verify {
        /// Database URL (sqlite://path or postgres://user@host/db).
        #[arg(long, env = "SOVRA_DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// The unseal key, base64 (a dev-file seal: `dev-seal.key` in the data directory).
        #[arg(long)]
        unseal_key_file: Option<PathBuf>,
        /// An unseal share, base64, one file per share; as many as the threshold.
        #[arg(long = "share-file")]
        share_files: Vec<PathBuf>,
        /// Sign the rows written before row MACs existed, where the audit log agrees with them.
        #[arg(long)]
        adopt_unsigned: bool,
        /// The server's `audit.checkpoint_interval_seconds`: a chain tail unsigned for longer
        /// is reported.
        #[arg(long, default_value_t = 60)]
        checkpoint_interval_seconds: u64,
    },
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check an audit export (JSON lines) offline; names the first broken link. Needs no
    /// server.
    Verify {
        /// The export file.
        file: PathBuf,
        /// The server's audit public key (SPKI PEM).
        #[arg(long)]
        public_key: PathBuf,
        /// A signed head kept from an earlier export (`--write-head`): the export must extend
        /// it, so a log rolled back or rewritten since is caught.
        #[arg(long)]
        since: Option<PathBuf>,
        /// Writes the export's last signed head (a checkpoint line) here, for a later
        /// `--since`.
        #[arg(long)]
        write_head: Option<PathBuf>,
    },
    /// Print the server's audit public key (SPKI PEM), for `sovra audit verify`.
    PublicKey,
    /// List your organization's events, newest first (admins and auditors).
    List(client_cmds::AuditListArgs),
    /// Export the chain as JSON lines (your org's events in full, others' as links,
    /// checkpoints), streamed to a file or stdout.
    Export {
        /// First sequence (default 1).
        #[arg(long)]
        from_seq: Option<u64>,
        /// Last sequence (default: the head when the export starts).
        #[arg(long)]
        to_seq: Option<u64>,
        /// Output file (default stdout).
        #[arg(long = "out")]
        out_file: Option<PathBuf>,
    },
    /// The keyed hash of a token or an encryption context, as found in events' `hashed`.
    Hash(client_cmds::AuditHashArgs),
}

/// Decodes a PEM `PUBLIC KEY` block to DER.
fn pem_to_der(pem: &str) -> Result<Vec<u8>> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    if !pem.contains("-----BEGIN PUBLIC KEY-----") {
        anyhow::bail!("not a PEM public key (expected -----BEGIN PUBLIC KEY-----)");
    }
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .context("the PEM public key is not valid base64")
}

fn audit_verify(
    file: &PathBuf,
    public_key: &PathBuf,
    since: Option<&PathBuf>,
    write_head: Option<&PathBuf>,
) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let pem = std::fs::read_to_string(public_key)
        .with_context(|| format!("cannot read {}", public_key.display()))?;
    let spki = pem_to_der(&pem)?;
    let report = match since {
        Some(head_file) => {
            let line = std::fs::read_to_string(head_file)
                .with_context(|| format!("cannot read {}", head_file.display()))?;
            let seen = match serde_json::from_str(line.trim()) {
                Ok(sovra_core::audit::ExportLine::Checkpoint(cp)) => cp,
                _ => bail!(
                    "{} is not a checkpoint line (`--write-head`)",
                    head_file.display()
                ),
            };
            let r = sovra_core::audit::verify_export_since(&text, &spki, &seen)
                .map_err(|e| anyhow::anyhow!("audit export is NOT intact: {e}"))?;
            println!(
                "the export extends the head seen earlier (sequence {})",
                seen.seq
            );
            r
        }
        None => sovra_core::audit::verify_export(&text, &spki)
            .map_err(|e| anyhow::anyhow!("audit export is NOT intact: {e}"))?,
    };
    if let Some(path) = write_head {
        let Some(cp) = &report.last_checkpoint else {
            bail!("the export has no checkpoint: there is no signed head to keep");
        };
        let line = serde_json::to_string(&sovra_core::audit::ExportLine::Checkpoint(cp.clone()))?;
        std::fs::write(path, line + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "audit export intact: {} events, {} checkpoints, signed through sequence {}{}",
        report.events,
        report.checkpoints,
        report
            .last_checkpoint_seq
            .map(|s| s.to_string())
            .unwrap_or_else(|| "none".into()),
        if report.unsigned_tail > 0 {
            format!(
                " ({} later events chained but not yet checkpointed)",
                report.unsigned_tail
            )
        } else {
            String::new()
        }
    );
    if report.redacted > 0 {
        println!(
            "{} events of other organizations were verified as links only",
            report.redacted
        );
    }
    if report.first_seq > 1 {
        println!(
            "note: the export starts at sequence {}; earlier events are not covered",
            report.first_seq
        );
    }
    if report.checkpoints == 0 {
        // Without a signature anyone with database access could have rebuilt the chain.
        println!("warning: no checkpoint in the export: the chain is consistent but not signed");
    }
    Ok(())
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SOVRA_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("SOVRA_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Server {
            config,
            dev,
            data_dir,
        } => {
            init_logging();
            if dev {
                sovra_server::dev::refuse_in_production()?;
            }
            let config = match &config {
                Some(p) => sovra_server::Config::load(p)?,
                None if dev => sovra_server::Config::default(),
                None => {
                    anyhow::bail!("--config FILE is required (or --dev for a local dev server)")
                }
            };
            sovra_server::serve::start(sovra_server::serve::ServerOptions {
                config,
                dev,
                data_dir,
            })
            .await?;
            Ok(())
        }
        Command::Audit(AuditCmd::Verify {
            file,
            public_key,
            since,
            write_head,
        }) => audit_verify(&file, &public_key, since.as_ref(), write_head.as_ref()),
        Command::Db(DbCmd::Migrate { database_url }) => {
            let applied = sovra_store::migrate(&database_url).await?;
            if applied.is_empty() {
                println!("database schema is up to date");
            } else {
                println!("applied migrations: {}", applied.join(", "));
            }
            Ok(())
        }
        Command::Db(DbCmd::Verify {
            database_url,
            unseal_key_file,
            share_files,
            adopt_unsigned,
            checkpoint_interval_seconds,
        }) => {
            db_verify::run(db_verify::VerifyArgs {
                database_url,
                unseal_key_file,
                share_files,
                adopt_unsigned,
                checkpoint_interval_seconds,
                json: matches!(cli.output, Output::Json),
            })
            .await
        }
        command => {
            let ca = match &cli.cacert {
                Some(p) => Some(
                    std::fs::read(p)
                        .with_context(|| format!("cannot read SOVRA_CACERT {}", p.display()))?,
                ),
                None => None,
            };
            let client = sovra_client::Client::new(&cli.addr, cli.token.clone(), ca.as_deref())?;
            client_cmds::run(&client, cli.output, command).await
        }
    }
}

pub(crate) use Command as Cmd;
