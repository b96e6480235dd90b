//! Rebuild when a migration is added. `sqlx::migrate!` embeds `migrations/` at compile
//! time and tracks the files it read, but not the directories: a new migration file
//! alone would leave a binary that never applies it (sqlx's documented remedy).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
