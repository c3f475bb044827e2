//! Why a run stopped before it could account for its devices.

/// Why a job run stopped before it could account for its devices.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The job: another HSM's, unknown, or closed.
    #[error(transparent)]
    Job(#[from] trustfab_hsm::JobOpError),
    /// The HSM refused a call about the job or its product.
    #[error(transparent)]
    Issue(#[from] trustfab_hsm::IssueError),
    /// The supply of parts failed.
    #[error("device supply: {0}")]
    Supply(String),
    /// The job programs firmware and the image given is missing or not the one it names.
    #[error("job {job}: {reason}")]
    Image {
        /// The job.
        job: trustfab_types::JobId,
        /// What is wrong with the image.
        reason: String,
    },
}
