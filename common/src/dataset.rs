//! Opening a converted dataset from any location.

use crate::error::{Error, Result};
use bytes::Bytes;

use crate::manifest::{DatasetManifest, LEGACY_MANIFEST_NAME, MANIFEST_NAME};
use crate::store::Location;

/// The manifest object at `loc` and the name it was found under: `_dataset.json`, or the legacy
/// `dataset.json` of datasets converted before the rename; `None` when neither exists.
pub async fn find_manifest(loc: &Location) -> Result<Option<(Bytes, &'static str)>> {
    for name in [MANIFEST_NAME, LEGACY_MANIFEST_NAME] {
        if let Some(bytes) = loc.get_opt(name).await? {
            return Ok(Some((bytes, name)));
        }
    }
    Ok(None)
}

/// The name of the manifest a dataset at `loc` already has (see [`find_manifest`]), without
/// reading it.
pub async fn existing_manifest(loc: &Location) -> Result<Option<&'static str>> {
    for name in [MANIFEST_NAME, LEGACY_MANIFEST_NAME] {
        if loc.exists(name).await? {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// Reads and validates the dataset manifest at `loc` (see [`find_manifest`]).
pub async fn load_manifest(loc: &Location) -> Result<DatasetManifest> {
    let (bytes, name) = find_manifest(loc).await?.ok_or_else(|| Error::NoDataset {
        location: loc.url().to_string(),
    })?;
    DatasetManifest::from_json(&bytes, &loc.display(name))
}
