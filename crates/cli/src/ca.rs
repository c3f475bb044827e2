//! The CA directory (`docs/ca-directory.md`) the vendor and OEM commands open: owned by
//! `trustfab_oem::ca`, named here for the binary's modules.

pub(crate) use trustfab_oem::ca::{
    random_serial, CaDir, InitSpec, Kind, DEVICE_CA_CERT, DEVICE_CA_KEY, ROOT_CERT, ROOT_KEY,
};
