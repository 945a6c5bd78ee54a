//! A Goose load test for bench/run.py: users GET the host's root with no wait, and at the
//! end one JSON line tells the script how many requests were made, how many failed, and
//! over how many seconds (Goose's own figures, so that nothing is guessed from its text).

use goose::prelude::*;

async fn get_root(user: &mut GooseUser) -> TransactionResult {
    let _ = user.get("/").await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), GooseError> {
    let metrics = GooseAttack::initialize()?
        .register_scenario(scenario!("bench").register_transaction(transaction!(get_root)))
        .execute()
        .await?;
    let (mut ok, mut failed) = (0usize, 0usize);
    for r in metrics.requests.values() {
        ok += r.success_count;
        failed += r.fail_count;
    }
    println!(
        "{{\"requests\": {}, \"failed\": {}, \"seconds\": {}}}",
        ok + failed,
        failed,
        metrics.duration
    );
    Ok(())
}
