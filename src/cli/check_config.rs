use std::process::ExitCode;

use super::ConfigArg;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArg,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let cfg = a.config.load()?;
    println!("# effective configuration (file + CCMETRICS__* environment + defaults)");
    print!("{}", cfg.to_toml());
    Ok(ExitCode::SUCCESS)
}
