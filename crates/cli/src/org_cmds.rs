//! `sovra org …` (server operators) and `sovra identity …` (org admins and auditors).

use crate::Output;
use anyhow::Result;
use clap::Subcommand;
use serde_json::json;
use sovra_client::{Client, IdentityInfo, OrgInfo};

#[derive(Subcommand)]
pub(crate) enum OrgCmd {
    /// Create an organization (with its first KEK).
    Create {
        /// 1 to 64 of a-z, 0-9, '-' and '_'.
        id: String,
        #[arg(long)]
        display_name: Option<String>,
    },
    List,
    Show {
        id: String,
    },
    /// Refuse every credential of the org until it is resumed.
    Suspend {
        id: String,
    },
    Resume {
        id: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum IdentityCmd {
    /// The identities of the caller's org.
    List,
    Show {
        /// Identity id (`ISSUER#SUBJECT`).
        id: String,
    },
    /// Register a JWT subject ahead of its first token (needed when its issuer does not
    /// provision identities, and for service accounts).
    Register {
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        subject: String,
        /// admin, user, auditor or service_account
        #[arg(long, default_value = "user")]
        kind: String,
        /// admin, auditor or user; repeat for several.
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Change an identity's kind, roles or status.
    Update {
        id: String,
        #[arg(long)]
        kind: Option<String>,
        /// Replaces the roles given in Sovra; repeat for several.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Remove every role given in Sovra.
        #[arg(long, conflicts_with = "roles")]
        no_roles: bool,
        /// active or disabled
        #[arg(long)]
        status: Option<String>,
    },
    /// Disable an identity: its credentials are refused.
    Disable {
        id: String,
    },
    Enable {
        id: String,
    },
}

pub(crate) async fn org(client: &Client, output: Output, cmd: OrgCmd) -> Result<()> {
    let org = match cmd {
        OrgCmd::Create { id, display_name } => {
            client.create_org(&id, display_name.as_deref()).await?
        }
        OrgCmd::List => {
            let orgs = client.list_orgs().await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&orgs)?),
                Output::Text => {
                    for o in &orgs {
                        println!("{}\t{}\t{}", o.id, o.status, o.display_name);
                    }
                }
            }
            return Ok(());
        }
        OrgCmd::Show { id } => client.get_org(&id).await?,
        OrgCmd::Suspend { id } => client.org_action(&id, "suspend").await?,
        OrgCmd::Resume { id } => client.org_action(&id, "resume").await?,
    };
    print_org(output, &org)
}

pub(crate) async fn identity(client: &Client, output: Output, cmd: IdentityCmd) -> Result<()> {
    let identity = match cmd {
        IdentityCmd::List => {
            let list = client.list_identities().await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                Output::Text => {
                    for i in &list {
                        println!("{}\t{}\t{}\t{}", i.id, i.kind, i.status, i.roles.join(","));
                    }
                }
            }
            return Ok(());
        }
        IdentityCmd::Show { id } => client.get_identity(&id).await?,
        IdentityCmd::Register {
            issuer,
            subject,
            kind,
            roles,
        } => {
            client
                .register_identity(&issuer, &subject, &kind, &roles)
                .await?
        }
        IdentityCmd::Update {
            id,
            kind,
            roles,
            no_roles,
            status,
        } => {
            let mut change = json!({});
            if let Some(k) = kind {
                change["kind"] = json!(k);
            }
            if no_roles || !roles.is_empty() {
                change["roles"] = json!(roles);
            }
            if let Some(s) = status {
                change["status"] = json!(s);
            }
            client.update_identity(&id, &change).await?
        }
        IdentityCmd::Disable { id } => {
            client
                .update_identity(&id, &json!({"status": "disabled"}))
                .await?
        }
        IdentityCmd::Enable { id } => {
            client
                .update_identity(&id, &json!({"status": "active"}))
                .await?
        }
    };
    print_identity(output, &identity)
}

fn print_org(output: Output, o: &OrgInfo) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(o)?),
        Output::Text => {
            println!("id:           {}", o.id);
            println!("display name: {}", o.display_name);
            println!("status:       {}", o.status);
            println!("created:      {}", o.created);
        }
    }
    Ok(())
}

fn print_identity(output: Output, i: &IdentityInfo) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(i)?),
        Output::Text => {
            println!("id:          {}", i.id);
            println!("kind:        {}", i.kind);
            println!("roles:       {}", i.roles.join(","));
            println!("status:      {}", i.status);
            println!("auth source: {}", i.auth_source);
            if !i.issuer.is_empty() {
                println!("issuer:      {}", i.issuer);
            }
            println!("subject:     {}", i.subject);
            println!("created:     {}", i.created);
            if let Some(t) = &i.last_seen {
                println!("last seen:   {t}");
            }
        }
    }
    Ok(())
}
