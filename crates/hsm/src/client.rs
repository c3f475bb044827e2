//! The client boundary: everything a station may ask of the HSM, and nothing more. A station
//! holds a `&dyn HsmClient`; it never reaches the ledger, a counter or a claim, so the count is
//! the HSM's alone by construction. [`Hsm`] implements it in process; a network client
//! implements the same trait over the wire.

use trustfab_formats::records::JobClosed;
use trustfab_formats::JobSpec;
use trustfab_types::{DeviceUid, HsmId, ProductKey};

use crate::{
    DeviceKey, DeviceOutcome, Hsm, IssueError, Issued, JobOpError, JobStatus, ProductFirmware,
    ProductStatus, Reservation,
};

/// What a station may ask of the HSM. Every call that spends or reads a job's units takes the
/// job's [`Reservation`]; the HSM checks that the reservation is its own and still open.
pub trait HsmClient: Send + Sync {
    /// The HSM's id, as job packages name it.
    fn hsm_id(&self) -> &HsmId;

    /// The identity key's uncompressed point: what job packages are signed with.
    fn identity_point(&self) -> &[u8];

    /// Every product with its counts.
    ///
    /// # Errors
    /// A ledger error.
    fn products(&self) -> Result<Vec<ProductStatus>, IssueError>;

    /// The OEM root certificate (DER) and the device CA certificate of a product.
    ///
    /// # Errors
    /// [`IssueError::UnknownProduct`] or a ledger error.
    fn chain(&self, product: &ProductKey) -> Result<(Vec<u8>, Option<Vec<u8>>), IssueError>;

    /// The firmware a product's devices boot, as its package set it.
    ///
    /// # Errors
    /// [`IssueError::UnknownProduct`] or a ledger error.
    fn firmware(&self, product: &ProductKey) -> Result<Option<ProductFirmware>, IssueError>;

    /// Reserves a job's quantity from its product and signs its package.
    ///
    /// # Errors
    /// A [`JobOpError`]; nothing is reserved then.
    fn reserve(&self, spec: JobSpec) -> Result<Reservation, JobOpError>;

    /// The reservation of an existing job from its package bytes.
    ///
    /// # Errors
    /// A [`JobOpError`].
    fn attach(&self, package: &[u8]) -> Result<Reservation, JobOpError>;

    /// The job's standing.
    ///
    /// # Errors
    /// A [`JobOpError`].
    fn job_status(&self, r: &Reservation) -> Result<JobStatus, JobOpError>;

    /// Issues certificates for (UID, public key) pairs within the reservation.
    ///
    /// # Errors
    /// An [`IssueError`]; unless it is [`IssueError::Sign`], nothing was spent or recorded.
    fn issue(&self, r: &Reservation, devices: &[DeviceKey]) -> Result<Vec<Issued>, IssueError>;

    /// The certificate recorded for a device of the job's product, rebuilt (same TBS).
    ///
    /// # Errors
    /// An [`IssueError`].
    fn certificate_for(
        &self,
        r: &Reservation,
        uid: &DeviceUid,
    ) -> Result<Option<Issued>, IssueError>;

    /// The product's family key, wrapped inside the token for the key this HSM certified for
    /// `uid`.
    ///
    /// # Errors
    /// An [`IssueError`].
    fn family_key_for(&self, r: &Reservation, uid: &DeviceUid) -> Result<Vec<u8>, IssueError>;

    /// Records device outcomes of the job.
    ///
    /// # Errors
    /// An [`IssueError`].
    fn record_outcomes(
        &self,
        r: &Reservation,
        outcomes: Vec<DeviceOutcome>,
    ) -> Result<(), IssueError>;

    /// Closes the job and credits what its reservation has left back to the product.
    ///
    /// # Errors
    /// A [`JobOpError`].
    fn close(&self, r: Reservation) -> Result<JobClosed, JobOpError>;
}

impl HsmClient for Hsm {
    fn hsm_id(&self) -> &HsmId {
        Self::hsm_id(self)
    }

    fn identity_point(&self) -> &[u8] {
        Self::identity_point(self)
    }

    fn products(&self) -> Result<Vec<ProductStatus>, IssueError> {
        Self::products(self).map_err(IssueError::Ledger)
    }

    fn chain(&self, product: &ProductKey) -> Result<(Vec<u8>, Option<Vec<u8>>), IssueError> {
        Self::chain(self, product)
    }

    fn firmware(&self, product: &ProductKey) -> Result<Option<ProductFirmware>, IssueError> {
        Self::firmware(self, product)
    }

    fn reserve(&self, spec: JobSpec) -> Result<Reservation, JobOpError> {
        Self::reserve(self, spec)
    }

    fn attach(&self, package: &[u8]) -> Result<Reservation, JobOpError> {
        Self::attach(self, package)
    }

    fn job_status(&self, r: &Reservation) -> Result<JobStatus, JobOpError> {
        Self::job_status(self, r)
    }

    fn issue(&self, r: &Reservation, devices: &[DeviceKey]) -> Result<Vec<Issued>, IssueError> {
        Self::issue(self, r, devices)
    }

    fn certificate_for(
        &self,
        r: &Reservation,
        uid: &DeviceUid,
    ) -> Result<Option<Issued>, IssueError> {
        self.own(r)?;
        Self::certificate_for(self, r.product(), uid)
    }

    fn family_key_for(&self, r: &Reservation, uid: &DeviceUid) -> Result<Vec<u8>, IssueError> {
        self.own(r)?;
        Self::family_key_for(self, r.product(), uid)
    }

    fn record_outcomes(
        &self,
        r: &Reservation,
        outcomes: Vec<DeviceOutcome>,
    ) -> Result<(), IssueError> {
        Self::record_outcomes(self, r, outcomes)
    }

    fn close(&self, r: Reservation) -> Result<JobClosed, JobOpError> {
        Self::close(self, r)
    }
}
