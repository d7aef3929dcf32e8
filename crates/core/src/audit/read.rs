//! Reading the audit log through the service: an org's admins and auditors list its events,
//! export the chain (other orgs' events redacted to links) and compute keyed hashes of values
//! they want to find.

use super::{AuditEvent, AuditQuery, ExportLine};
use crate::authz::{Action, Resource, authorize};
use crate::error::CoreError;
use crate::identity::Principal;
use crate::kms::Kms;

/// Most events in one listing page.
pub const MAX_PAGE: u32 = 1000;

impl Kms {
    /// The principal's org's events matching `q` (its `org` is replaced by the caller's).
    pub async fn query_audit(
        &self,
        p: &Principal,
        mut q: AuditQuery,
    ) -> Result<Vec<AuditEvent>, CoreError> {
        authorize(p, Action::AuditRead, Resource::Org(p.org()))?;
        q.org = p.org().to_string();
        q.limit = q.limit.clamp(1, MAX_PAGE);
        Ok(self.store.query_audit(&q).await?)
    }

    /// Checks that the principal may export, and returns the current chain head's sequence
    /// (0 while the log is empty), which bounds an export that names no end.
    pub async fn audit_export_head(&self, p: &Principal) -> Result<u64, CoreError> {
        authorize(p, Action::AuditRead, Resource::Org(p.org()))?;
        Ok(self.store.audit_head().await?.map_or(0, |(seq, _)| seq))
    }

    /// One page of an export: events `from_seq..=to_seq` (at most `limit`), the principal's
    /// org's in full and every other event redacted to its link, each followed by the
    /// checkpoint signed at its sequence, if any.
    pub async fn audit_export_page(
        &self,
        p: &Principal,
        from_seq: u64,
        to_seq: u64,
        limit: u32,
    ) -> Result<Vec<ExportLine>, CoreError> {
        authorize(p, Action::AuditRead, Resource::Org(p.org()))?;
        let events: Vec<AuditEvent> = self
            .store
            .audit_events(from_seq, limit)
            .await?
            .into_iter()
            .take_while(|e| e.seq <= to_seq)
            .collect();
        let Some(last) = events.last().map(|e| e.seq) else {
            return Ok(Vec::new());
        };
        let mut checkpoints = self
            .store
            .audit_checkpoints(from_seq, last)
            .await?
            .into_iter()
            .peekable();
        let mut lines = Vec::with_capacity(events.len());
        for ev in events {
            let seq = ev.seq;
            if ev.org.as_deref() == Some(p.org().as_str()) {
                lines.push(ExportLine::Event(Box::new(ev)));
            } else {
                lines.push(ExportLine::Redacted(ev.redacted()));
            }
            while let Some(cp) = checkpoints.next_if(|cp| cp.seq <= seq) {
                if cp.seq == seq {
                    lines.push(ExportLine::Checkpoint(cp));
                }
            }
        }
        Ok(lines)
    }

    /// The keyed hash an audit event would carry for `value` in `field`, so an auditor can
    /// find the events of a known token or context.
    pub async fn audit_keyed_hash(
        &self,
        p: &Principal,
        field: &str,
        value: &[u8],
    ) -> Result<String, CoreError> {
        authorize(p, Action::AuditRead, Resource::Org(p.org()))?;
        Ok(self.audit_keys().await?.keyed_hash(field, value))
    }
}
