//! Opening a converted dataset from any location.

use crate::error::{Error, Result};
use crate::manifest::{DatasetManifest, MANIFEST_NAME};
use crate::store::Location;

/// Reads and validates `dataset.json` at `loc`.
pub async fn load_manifest(loc: &Location) -> Result<DatasetManifest> {
    let bytes = loc
        .get_opt(MANIFEST_NAME)
        .await?
        .ok_or_else(|| Error::NoDataset {
            location: loc.url().to_string(),
        })?;
    DatasetManifest::from_json(&bytes, &loc.display(MANIFEST_NAME))
}
