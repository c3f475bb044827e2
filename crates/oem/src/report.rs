//! The OEM's check of an HSM's production report against its orders: the report format and its
//! rules are the format's (`trustfab_formats::report`); this is the OEM's entry to them.

use std::io::BufRead;

use trustfab_formats::report::ReportSummary;
use trustfab_types::UnixTime;

use crate::Error;

/// Verifies the report read from `report` against `orders` (the packages the OEM sealed for
/// this product, each opened under the root it carries) and the pinned `vendor_root` (DER) the
/// HSM's identity must chain to, at `now`. Returns what the report proves.
///
/// # Errors
/// [`Error::Order`]: an order is not a package that verifies; [`Error::Report`]: the report is
/// refused, naming the first item or record that is wrong.
pub fn verify<R: BufRead>(
    report: R,
    orders: &[Vec<u8>],
    vendor_root: &[u8],
    now: UnixTime,
) -> Result<ReportSummary, Error> {
    let contents = orders
        .iter()
        .enumerate()
        .map(|(index, bytes)| {
            trustfab_formats::package::open(bytes)
                .map(trustfab_formats::package::VerifiedPackage::into_contents)
                .map_err(|source| Error::Order { index, source })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(trustfab_formats::report::verify_report(
        report,
        vendor_root,
        &contents,
        now,
    )?)
}
