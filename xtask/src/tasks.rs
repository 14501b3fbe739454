use anyhow::Result;
use std::path::PathBuf;
pub fn build(_r: bool) -> Result<()> {
    Ok(())
}
pub fn run_quickstart(_c: Option<PathBuf>) -> Result<()> {
    Ok(())
}
pub fn test(_f: Option<&str>, _n: bool) -> Result<()> {
    Ok(())
}
pub fn bench(_w: &str) -> Result<()> {
    Ok(())
}
