//! The end of a run: counts per category, a sample of Clerk ids per category,
//! and whether user-service is now in sync (the exit status).

use std::{fmt, process::ExitCode, time::Duration};

use userdata_kit::grpc_code;

use crate::reconcile::{
    plan::{DeletesRefused, Plan, Write},
    write::Written,
};

/// Clerk ids shown per category.
pub const SAMPLE_SIZE: usize = 5;

/// Exit status when user-service is not (or would not be) in sync.
pub const EXIT_NOT_IN_SYNC: u8 = 1;

/// Counts per category.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Users Clerk listed.
    pub listed: u64,
    /// Users user-service held when the run began.
    pub local: u64,
    /// Created here.
    pub created: u64,
    /// Updated to Clerk's newer profile.
    pub updated: u64,
    /// Already equal; not written.
    pub unchanged: u64,
    /// Different, but user-service's state was at least as new; unchanged.
    pub stale: u64,
    /// Listed by Clerk but deleted here; kept deleted.
    pub tombstoned: u64,
    /// Deleted here because Clerk no longer lists them.
    pub deleted: u64,
    /// Not listed by Clerk and kept (no `--delete-missing`).
    pub kept: u64,
    /// Refused by user-service, or failing after retries.
    pub failed: u64,
}

/// A bounded list of Clerk ids, and for updates the differing field names.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sample(Vec<String>);

impl Sample {
    /// Adds `item` unless the sample is full.
    pub fn offer(&mut self, item: impl FnOnce() -> String) {
        if self.0.len() < SAMPLE_SIZE {
            self.0.push(item());
        }
    }

    /// The items.
    pub fn items(&self) -> &[String] {
        &self.0
    }
}

/// Samples per category.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Samples {
    /// Created (or to create).
    pub create: Sample,
    /// Updated (or to update), with the fields.
    pub update: Sample,
    /// Deleted (or to delete).
    pub delete: Sample,
    /// Not in Clerk, kept.
    pub kept: Sample,
    /// Stale.
    pub stale: Sample,
    /// Kept deleted.
    pub tombstoned: Sample,
    /// Failed, with the gRPC code.
    pub failed: Sample,
}

/// How the run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// user-service matches Clerk (as far as the rules allow).
    InSync,
    /// Dry run: this many writes are planned. An upper bound of what would
    /// change: only user-service can tell, when written, that a user is
    /// deleted here or holds a newer copy (see [`crate::reconcile::plan`]).
    WouldChange(u64),
    /// Some writes failed.
    Failed(u64),
    /// `--delete-missing` over `--max-deletes`: nothing was written.
    DeletesRefused(DeletesRefused),
}

/// What a run did (or, dry, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Whether nothing was written on purpose.
    pub dry_run: bool,
    /// Counts.
    pub counts: Counts,
    /// Samples.
    pub samples: Samples,
    /// The ending.
    pub verdict: Verdict,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Report {
    /// A report of `plan` with nothing written: for a dry run, or when the
    /// deletions were refused. `deleting` says whether missing users would go.
    pub fn unwritten(plan: &Plan, deleting: bool, dry_run: bool, refused: Option<DeletesRefused>) -> Self {
        let mut samples = Samples::default();
        for write in &plan.writes {
            match write {
                Write::Create(user) => samples.create.offer(|| user.id.clone()),
                Write::Update { user, fields } => {
                    samples.update.offer(|| format!("{} ({})", user.id, fields.join(", ")))
                }
            }
        }
        let missing_sample = if deleting { &mut samples.delete } else { &mut samples.kept };
        for clerk_id in &plan.missing {
            missing_sample.offer(|| clerk_id.clone());
        }
        let missing = plan.missing.len() as u64;
        let counts = Counts {
            listed: plan.listed,
            local: plan.local,
            created: plan.creates() as u64,
            updated: plan.updates() as u64,
            unchanged: plan.unchanged,
            deleted: if deleting { missing } else { 0 },
            kept: if deleting { 0 } else { missing },
            ..Counts::default()
        };
        let changes = counts.created + counts.updated + counts.deleted;
        let verdict = match refused {
            Some(refused) => Verdict::DeletesRefused(refused),
            None if changes > 0 => Verdict::WouldChange(changes),
            None => Verdict::InSync,
        };
        Self { dry_run, counts, samples, verdict, elapsed: Duration::ZERO }
    }

    /// Starts the report of a run that writes `plan`.
    pub fn writing(plan: &Plan, deleting: bool) -> Self {
        let mut report = Self::unwritten(plan, deleting, false, None);
        let Counts { listed, local, unchanged, kept, .. } = report.counts;
        report.counts = Counts { listed, local, unchanged, kept, ..Counts::default() };
        report.samples = Samples { kept: report.samples.kept, ..Samples::default() };
        report.verdict = Verdict::InSync;
        report
    }

    /// Counts one write's result.
    pub fn record(&mut self, clerk_id: &str, written: Written) {
        let (counts, samples) = (&mut self.counts, &mut self.samples);
        match written {
            Written::Created => {
                counts.created += 1;
                samples.create.offer(|| clerk_id.to_owned());
            }
            Written::Updated => {
                counts.updated += 1;
                samples.update.offer(|| clerk_id.to_owned());
            }
            Written::Stale => {
                counts.stale += 1;
                samples.stale.offer(|| clerk_id.to_owned());
            }
            Written::Tombstoned => {
                counts.tombstoned += 1;
                samples.tombstoned.offer(|| clerk_id.to_owned());
            }
            Written::Deleted => {
                counts.deleted += 1;
                samples.delete.offer(|| clerk_id.to_owned());
            }
            Written::Failed(code) => {
                counts.failed += 1;
                samples.failed.offer(|| format!("{clerk_id} ({})", grpc_code::name(code)));
                self.verdict = Verdict::Failed(counts.failed);
            }
        }
    }

    /// One line saying why the run is not in sync, or `None` when it is.
    pub fn reason(&self) -> Option<String> {
        match &self.verdict {
            Verdict::InSync => None,
            Verdict::WouldChange(changes) => Some(format!(
                "dry run: {changes} writes planned, nothing was written (users deleted here or changed here after \
                 Clerk's copy are planned too; a real run leaves them alone and exits 0)"
            )),
            Verdict::Failed(failed) => Some(format!(
                "{failed} users could not be written (e.g. {}); the rest is in sync, run again once fixed",
                self.samples.failed.items().join(", ")
            )),
            Verdict::DeletesRefused(refused) => Some(refused.to_string()),
        }
    }

    /// 0 in sync, [`EXIT_NOT_IN_SYNC`] otherwise.
    pub fn exit_code(&self) -> ExitCode {
        if self.verdict == Verdict::InSync { ExitCode::SUCCESS } else { ExitCode::from(EXIT_NOT_IN_SYNC) }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        let would = if self.dry_run { "would be " } else { "" };
        writeln!(f, "Clerk users: {}, user-service users before the run: {}", c.listed, c.local)?;
        let rows: [(&str, u64, &Sample); 8] = [
            ("created", c.created, &self.samples.create),
            ("updated", c.updated, &self.samples.update),
            ("unchanged", c.unchanged, &Sample::default()),
            ("stale (newer here, left alone)", c.stale, &self.samples.stale),
            ("deleted here, kept deleted", c.tombstoned, &self.samples.tombstoned),
            ("deleted (not in Clerk)", c.deleted, &self.samples.delete),
            ("not in Clerk, kept (no --delete-missing)", c.kept, &self.samples.kept),
            ("failed", c.failed, &self.samples.failed),
        ];
        for (name, count, sample) in rows {
            let changes = matches!(name, "created" | "updated" | "deleted (not in Clerk)");
            let prefix = if changes { would } else { "" };
            write!(f, "  {prefix}{name}: {count}")?;
            if !sample.items().is_empty() {
                let more = if count > sample.items().len() as u64 { ", …" } else { "" };
                write!(f, "  [{}{more}]", sample.items().join(", "))?;
            }
            writeln!(f)?;
        }
        let status = match &self.verdict {
            Verdict::InSync => "in sync".to_owned(),
            Verdict::WouldChange(n) => format!("dry run, nothing written: {n} writes planned"),
            Verdict::Failed(n) => format!("not in sync: {n} failed"),
            Verdict::DeletesRefused(refused) => {
                format!(
                    "refused: {} deletions exceed --max-deletes {}; nothing written",
                    refused.count, refused.max
                )
            }
        };
        write!(f, "{status} ({:.1} s)", self.elapsed.as_secs_f64())
    }
}
