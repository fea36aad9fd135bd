//! One contract suite per backend trait, each run against the embedded and
//! the aws implementation (the latter on moto).

mod bus;
mod secrets;
mod stacks;
mod store;

use std::sync::Arc;

use crate::aws_world::AwsWorld;

async fn on_moto() -> Arc<AwsWorld> {
    AwsWorld::start().await
}

fn embedded_db() -> (tempfile::TempDir, devops_bot::backends::sqlite::Database) {
    let dir = tempfile::tempdir().unwrap();
    let db = devops_bot::backends::sqlite::Database::open(&dir.path().join("state.db")).unwrap();
    (dir, db)
}

fn sealer(dir: &tempfile::TempDir) -> devops_bot::domain::secret::Sealer {
    devops_bot::domain::secret::Sealer::from_key_file(&dir.path().join("vault.key")).unwrap()
}
