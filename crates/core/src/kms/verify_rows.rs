//! The offline check of stored rows (`sovra db verify`): every key row's MAC, and its revision
//! and state against the changes the audit log records, which a replayed older row (its MAC
//! valid once) cannot match. Rows written before row MACs existed can be adopted here, by an
//! operator holding the unseal material, if the audit log agrees with them.

use super::Kms;
use crate::audit::{AuditEvent, GENESIS};
use crate::error::CoreError;
use crate::integrity::{KEY_CREATE, KEY_ROW_CHANGES};
use crate::model::KeyState;
use std::collections::HashMap;
use uuid::Uuid;

/// What the check found.
#[derive(Debug, Default)]
pub struct RowCheck {
    pub keys_checked: usize,
    /// Unsigned rows signed by `--adopt-unsigned`.
    pub adopted: usize,
    pub audit_events_read: u64,
    pub findings: Vec<RowFinding>,
    /// The sequence of an earlier adoption run's event: after it, no row may be adopted.
    pub adoption_recorded: Option<u64>,
}

/// The audit action of an adoption run (`sovra db verify --adopt-unsigned`). Appended to the
/// chain and signed by the run, so that it cannot be removed unnoticed: the pre-MAC era ends
/// with it, and a row found without a MAC afterwards was stripped, never adopted.
pub(crate) const ADOPTION_ACTION: &str = "db.adopt_unsigned";

impl RowCheck {
    /// Whether anything was found that makes a row (or the log it is checked against)
    /// untrustworthy; warnings alone leave it intact.
    pub fn intact(&self) -> bool {
        self.findings.iter().all(|f| !f.fatal)
    }
}

#[derive(Debug)]
pub struct RowFinding {
    /// `key/<id>` or `audit`.
    pub subject: String,
    /// `false` for a warning that does not prove tampering.
    pub fatal: bool,
    pub problem: String,
}

/// What the audit log says about one key: its successful changes and the state the last
/// state change left.
#[derive(Debug, Default)]
struct AuditedKey {
    changes: u64,
    state: Option<KeyState>,
    /// The org and identity of the successful `key.create`: the row's org and owner.
    created_by: Option<(Option<String>, String)>,
}

impl AuditedKey {
    /// What the row says that the audit log contradicts (owner, org, or state when the row
    /// is at the log's revision).
    fn contradiction(&self, key: &crate::model::KeyRecord) -> Option<String> {
        if let Some((org, actor)) = &self.created_by
            && (*actor != key.owner || org.as_deref() != Some(key.org_id.as_str()))
        {
            return Some(format!(
                "the row names owner {} in org {}, but the audit log records {actor} creating it in org {}",
                key.owner,
                key.org_id,
                org.as_deref().unwrap_or("-")
            ));
        }
        match self.state {
            Some(state) if state != key.state => Some(format!(
                "the row is {} but the audit log's last change left it {}",
                key.state.as_str(),
                state.as_str()
            )),
            _ => None,
        }
    }
}

impl Kms {
    /// Checks every key row (see the module); with `adopt_unsigned`, signs the rows that have
    /// no MAC yet and agree with the audit log. Needs the service unsealed.
    pub async fn verify_rows(
        &self,
        adopt_unsigned: bool,
        checkpoint_interval: std::time::Duration,
    ) -> Result<RowCheck, CoreError> {
        let rows = self.seal.row_mac()?;
        let mut report = RowCheck::default();
        let audited = self.audited_key_changes(&mut report).await?;
        let head = self.store.audit_head().await?;
        if let Some(alarm) = self
            .audit_start_check(head.as_ref(), checkpoint_interval)
            .await?
        {
            report.findings.push(RowFinding {
                subject: "audit".into(),
                fatal: true,
                problem: alarm,
            });
        }
        // Adoption trusts what the log does not record; it needs a whole log, and happens once.
        let log_intact = report.intact();
        let adoption_recorded = report.adoption_recorded;
        for key in self.store.all_keys().await? {
            report.keys_checked += 1;
            let subject = format!("key/{}", key.id);
            let log = audited.get(&key.id);
            let mut finding = |fatal, problem: String| {
                report.findings.push(RowFinding {
                    subject: subject.clone(),
                    fatal,
                    problem,
                })
            };
            if key.row_mac.is_empty() {
                if !adopt_unsigned {
                    finding(
                        true,
                        "the row has no MAC (written before row MACs); it is refused until \
                         `sovra db verify --adopt-unsigned`"
                            .into(),
                    );
                    continue;
                }
                let refusal = if let Some(seq) = adoption_recorded {
                    Some(format!(
                        "not adopted: rows were adopted already (audit event {seq}); a row \
                         without a MAC since then had it removed"
                    ))
                } else if !log_intact {
                    Some("not adopted: the audit log is not intact (above)".into())
                } else if key.revision != 0 {
                    Some(format!(
                        "not adopted: a row written before row MACs has revision 0, this one {}",
                        key.revision
                    ))
                } else {
                    match log {
                        None => Some(
                            "not adopted: the audit log records no creation of this key".into(),
                        ),
                        Some(l) if l.created_by.is_none() => Some(
                            "not adopted: the audit log records no creation of this key".into(),
                        ),
                        Some(l) => l.contradiction(&key).map(|p| format!("not adopted: {p}")),
                    }
                };
                match refusal {
                    Some(problem) => finding(true, problem),
                    None => {
                        let mut signed = key.clone();
                        signed.revision = log.map_or(1, |l| l.changes.max(1));
                        rows.sign_key(&mut signed);
                        if self.store.adopt_unsigned_key(&signed).await? {
                            report.adopted += 1;
                        } else {
                            finding(true, "not adopted: the row changed meanwhile".into());
                        }
                    }
                }
                continue;
            }
            if !rows.key_is_intact(&key) {
                finding(
                    true,
                    "the row fails its MAC: it was changed outside Sovra".into(),
                );
                continue;
            }
            let Some(log) = log else {
                finding(
                    false,
                    "the audit log records no change to this key (created before the log's \
                     first event, or the log was cut)"
                        .into(),
                );
                continue;
            };
            if key.revision < log.changes {
                finding(
                    true,
                    format!(
                        "the row is revision {} but the audit log records {} changes: an older \
                         row was put back (replayed)",
                        key.revision, log.changes
                    ),
                );
            } else if key.revision > log.changes {
                finding(
                    false,
                    format!(
                        "the row is revision {} and the audit log records {} changes: a change \
                         whose audit event failed, or one not yet stored by a running node",
                        key.revision, log.changes
                    ),
                );
            } else if let Some(problem) = log.contradiction(&key) {
                finding(true, problem);
            }
        }
        if adopt_unsigned && adoption_recorded.is_none() && log_intact {
            self.record_adoption(report.adopted).await?;
        }
        Ok(report)
    }

    /// Appends the adoption run's event to the chain and signs the new head, so that the next
    /// start finds no unsigned tail and no later run adopts again.
    async fn record_adoption(&self, adopted: usize) -> Result<(), CoreError> {
        let mut event = AuditEvent::node_alarm(
            ADOPTION_ACTION,
            format!("{adopted} key rows written before row MACs were signed"),
            self.clock().now().as_millis(),
        );
        event.actor = "sovra db verify".into();
        event.resource = "keys".into();
        event.outcome = "success".into();
        event.error_code = None;
        event.source = "offline".into();
        let stored = self.store.append_audit(vec![event]).await?;
        if let Some(last) = stored.last() {
            self.audit_checkpoint(last.seq, &last.hash).await?;
        }
        Ok(())
    }

    /// Reads the whole audit chain, checking each link, and counts each key's successful
    /// changes. A broken link is a finding: the counts then prove nothing.
    async fn audited_key_changes(
        &self,
        report: &mut RowCheck,
    ) -> Result<HashMap<Uuid, AuditedKey>, CoreError> {
        let mut keys: HashMap<Uuid, AuditedKey> = HashMap::new();
        report.adoption_recorded = None;
        let mut prev = GENESIS.to_string();
        let mut next_seq = 1u64;
        loop {
            let page = self.store.audit_events(next_seq, 1000).await?;
            if page.is_empty() {
                return Ok(keys);
            }
            for e in page {
                if let Some(problem) = broken_link(&e, next_seq, &prev) {
                    report.findings.push(RowFinding {
                        subject: "audit".into(),
                        fatal: true,
                        problem,
                    });
                }
                report.audit_events_read += 1;
                if e.action == ADOPTION_ACTION {
                    report.adoption_recorded = Some(e.seq);
                }
                next_seq = e.seq + 1;
                prev.clone_from(&e.hash);
                let change = KEY_ROW_CHANGES.iter().find(|(a, _)| *a == e.action);
                let key = e
                    .resource
                    .strip_prefix("key/")
                    .and_then(|id| Uuid::parse_str(id).ok());
                if let (Some((_, state)), Some(id), "success") = (change, key, e.outcome.as_str()) {
                    let k = keys.entry(id).or_default();
                    k.changes += 1;
                    if e.action == KEY_CREATE {
                        k.created_by = Some((e.org.clone(), e.actor.clone()));
                    }
                    if state.is_some() {
                        k.state = *state;
                    }
                }
            }
        }
    }
}

fn broken_link(e: &AuditEvent, seq: u64, prev: &str) -> Option<String> {
    if e.seq != seq {
        Some(format!(
            "event {} follows event {} (events missing)",
            e.seq,
            seq - 1
        ))
    } else if e.prev_hash != prev {
        Some(format!("event {seq} does not link to the event before it"))
    } else if e.compute_hash() != e.hash {
        Some(format!("event {seq} was changed after it was written"))
    } else {
        None
    }
}
