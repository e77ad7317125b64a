//! `pifleet-controller user …`: admin users of the API and dashboard (part of the binary).

use clap::Subcommand;
use pifleet_controller::admin::{self, AdminError};
use pifleet_controller::auth::Role;
use pifleet_controller::datadir::DataDir;
use pifleet_controller::store::Store;

use super::{DataDirArg, audit, open_store};

#[derive(Subcommand)]
pub enum UserCmd {
    /// Create a user. The password is read from a prompt (or one line of stdin when it is
    /// not a terminal), never from the command line; --generate makes a one-time password.
    Add {
        #[command(flatten)]
        dir: DataDirArg,
        name: String,
        /// viewer (read), operator (read and send commands) or admin (everything).
        #[arg(long)]
        role: Role,
        /// Generate a one-time password and print it instead of reading one.
        #[arg(long)]
        generate: bool,
        /// Do not require a password change at first sign-in (for a password the user
        /// chose themselves).
        #[arg(long)]
        permanent: bool,
    },
    /// List users.
    List {
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Change a user's role (effective on their next request).
    SetRole {
        #[command(flatten)]
        dir: DataDirArg,
        name: String,
        role: Role,
    },
    /// Disable a user: signed out everywhere at once, cannot sign in.
    Disable {
        #[command(flatten)]
        dir: DataDirArg,
        name: String,
    },
    /// Enable a disabled user.
    Enable {
        #[command(flatten)]
        dir: DataDirArg,
        name: String,
    },
    /// Delete a user.
    Delete {
        #[command(flatten)]
        dir: DataDirArg,
        name: String,
    },
    /// Turn off a user's MFA (lost authenticator).
    ResetMfa {
        #[command(flatten)]
        dir: DataDirArg,
        name: String,
    },
    /// Give a user a new one-time password (also lifts a lockout and signs them out).
    ResetPassword {
        #[command(flatten)]
        dir: DataDirArg,
        name: String,
    },
}

/// Reads a new password from the terminal (twice) or one line of stdin.
fn read_new_password(name: &str) -> anyhow::Result<String> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        let a = rpassword::prompt_password(format!("New password for {name}: "))?;
        let b = rpassword::prompt_password("Again: ")?;
        if a != b {
            anyhow::bail!(AdminError::Invalid("the passwords differ".into()));
        }
        Ok(a)
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }
}

pub async fn run(cmd: UserCmd) -> anyhow::Result<()> {
    use pifleet_controller::auth::password::{self, Passwords};
    use pifleet_controller::config::Config;
    let passwords = |dd: &DataDir| -> anyhow::Result<Passwords> {
        let cfg = Config::load(&dd.config())?;
        Ok(Passwords::new(cfg.auth.argon2_cost())?)
    };
    match cmd {
        UserCmd::Add {
            dir,
            name,
            role,
            generate,
            permanent,
        } => {
            let (dd, store) = open_store(&dir).await?;
            admin::validate_user_name(&name)?;
            let pw = if generate {
                None
            } else {
                Some(read_new_password(&name)?)
            };
            let passwords = passwords(&dd)?;
            let r = admin::create_user(
                &store,
                admin::hash_with(&passwords),
                &name,
                role,
                pw.as_deref(),
                !permanent,
            )
            .await;
            let outcome = match &r {
                Ok(_) => "ok".to_owned(),
                Err(e) => format!("refused: {e}"),
            };
            audit(
                &store,
                "user.create",
                &name,
                &outcome,
                &format!("role={role}"),
            )
            .await?;
            store.close().await;
            let created = r?;
            println!("user {name} created with role {role}");
            if let Some(p) = created.one_time_password {
                println!(
                    "one-time password: {p}  (shown only now; must be changed at first sign-in)"
                );
            }
        }
        UserCmd::List { dir } => {
            let (_, store) = open_store(&dir).await?;
            let users = store.list_users().await?;
            store.close().await;
            println!(
                "{:<24} {:<9} {:<9} {:<5} PASSWORD",
                "NAME", "ROLE", "STATE", "MFA"
            );
            for u in users {
                println!(
                    "{:<24} {:<9} {:<9} {:<5} {}",
                    u.name,
                    u.role,
                    if u.disabled_at.is_some() {
                        "disabled"
                    } else {
                        "enabled"
                    },
                    if u.mfa_enabled_at.is_some() {
                        "on"
                    } else {
                        "off"
                    },
                    if u.must_change_password {
                        "must change"
                    } else {
                        "set"
                    }
                );
            }
        }
        UserCmd::SetRole { dir, name, role } => {
            let (_, store) = open_store(&dir).await?;
            let r = store.update_user(&name, Some(role), None).await?;
            finish_user_change(
                &store,
                "user.update",
                &name,
                &format!("role={role}"),
                r.map(|_| ()),
            )
            .await?;
            println!("user {name} is now {role}");
        }
        UserCmd::Disable { dir, name } => {
            let (_, store) = open_store(&dir).await?;
            let r = store.update_user(&name, None, Some(true)).await?;
            finish_user_change(&store, "user.update", &name, "disabled=true", r.map(|_| ()))
                .await?;
            println!("user {name} disabled and signed out");
        }
        UserCmd::Enable { dir, name } => {
            let (_, store) = open_store(&dir).await?;
            let r = store.update_user(&name, None, Some(false)).await?;
            finish_user_change(
                &store,
                "user.update",
                &name,
                "disabled=false",
                r.map(|_| ()),
            )
            .await?;
            println!("user {name} enabled");
        }
        UserCmd::Delete { dir, name } => {
            let (_, store) = open_store(&dir).await?;
            let r = store.delete_user(&name).await?;
            finish_user_change(&store, "user.delete", &name, "", r).await?;
            println!("user {name} deleted");
        }
        UserCmd::ResetMfa { dir, name } => {
            let (_, store) = open_store(&dir).await?;
            let r = if store.reset_mfa(&name).await? {
                Ok(())
            } else {
                Err(pifleet_controller::store::users::UserChange::NoUser(
                    name.clone(),
                ))
            };
            finish_user_change(&store, "user.reset_mfa", &name, "", r).await?;
            println!("MFA of {name} turned off; they can set it up again");
        }
        UserCmd::ResetPassword { dir, name } => {
            let (dd, store) = open_store(&dir).await?;
            let Some(user) = store.user_by_name(&name).await? else {
                store.close().await;
                anyhow::bail!(AdminError::Invalid(format!("no user {name}")));
            };
            let pw = password::one_time_password();
            let hash = passwords(&dd)?.hash(&pw)?;
            store.set_password(user.id, &hash, true, None).await?;
            store.clear_failures(&user.name).await?;
            audit(&store, "user.reset_password", &name, "ok", "").await?;
            store.close().await;
            println!(
                "one-time password for {name}: {pw}  (shown only now; must be changed at first sign-in)"
            );
        }
    }
    Ok(())
}

/// Audits a user change made from the CLI and turns a refusal into a usage error.
async fn finish_user_change(
    store: &Store,
    action: &str,
    name: &str,
    detail: &str,
    r: Result<(), pifleet_controller::store::users::UserChange>,
) -> anyhow::Result<()> {
    let outcome = match &r {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("refused: {e}"),
    };
    audit(store, action, name, &outcome, detail).await?;
    store.close().await;
    r.map_err(|e| AdminError::Invalid(e.to_string()))?;
    Ok(())
}
