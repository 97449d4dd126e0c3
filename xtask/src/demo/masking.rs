//! The agent reads the customers table with its personal data masked; the superuser sees the
//! real values.

use agentgate_tests::{
    pg::{psql_command, PgServer, SUPERUSER_PASSWORD},
    place, Cgroup,
};

use super::{
    background::run_merged,
    output::print_indented,
    postgres::{CUSTOMERS_QUERY, PG_PORT},
};

/// The agent reads table customers through the gateway (masked), then the superuser reads it
/// straight from the database (the real values).
pub(super) fn masking(
    agent: &Cgroup,
    conn: &str,
    shown: &str,
    pg: &PgServer,
) -> anyhow::Result<u32> {
    println!(
        "\n-- masking: the agent in {} reads table customers (rules mask-customer-email, mask-customer-numbers, mask-emails-anywhere):",
        agent.rel
    );
    println!("   $ psql -X --dbname=\"{shown}\" -c '{CUSTOMERS_QUERY}'");
    let mut cmd = psql_command(conn);
    cmd.args(["-c", CUSTOMERS_QUERY]);
    place(&mut cmd, Some(agent), None);
    let (pid, masked) = run_merged(cmd, "")?;
    print_indented(masked.trim_end());

    let superuser = pg.conninfo("postgres", SUPERUSER_PASSWORD, "agentdb", "disable");
    println!("\n-- the same query as the superuser, from outside managed cgroups (straight to the database):");
    println!(
        "   $ psql -X --dbname=\"host=127.0.0.1 port={PG_PORT} dbname=agentdb user=postgres password=…\" -c '{CUSTOMERS_QUERY}'"
    );
    let mut cmd = psql_command(&superuser);
    cmd.args(["-c", CUSTOMERS_QUERY]);
    let (_, real) = run_merged(cmd, "")?;
    print_indented(real.trim_end());
    println!();

    let ok = masked.contains("hmac:")
        && masked.contains("****1111")
        && masked.contains("****6789")
        && masked.contains("cc ****")
        && !masked.contains('@')
        && real.contains("alice@example.com");
    println!(
        "   => {}",
        if ok {
            "the agent got email as hmac:… (HMAC-SHA256 with the key in /tmp/agentgate-demo/mask.key: \
             equal emails mask alike, so joins still work),\n      \
             card_number and ssn as **** and their last 4 characters, the address inside note as ****; \
             the database keeps the real values"
        } else {
            "the agent's rows are NOT masked as postgres.yaml says (wrong)"
        }
    );
    Ok(pid)
}
