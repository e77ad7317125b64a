//! `pifleet-controller user …`: admin users of the API and dashboard.

use clap::Subcommand;
use pifleet_controller::auth::Role;
use pifleet_controller::auth::users;
use pifleet_controller::store::users::UserChange;

use super::{DataDirArg, Usage, conclude, open, record};

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
            anyhow::bail!(Usage("the passwords differ".into()));
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
    match cmd {
        UserCmd::Add {
            dir,
            name,
            role,
            generate,
            permanent,
        } => {
            let o = open(&dir).await?;
            users::validate_user_name(&name)?;
            let pw = if generate {
                None
            } else {
                Some(read_new_password(&name)?)
            };
            let passwords = Passwords::new(o.cfg.auth.argon2_cost())?;
            let r = users::create_user(
                &o.store,
                users::hash_with(&passwords),
                &name,
                role,
                pw.as_deref(),
                !permanent,
            )
            .await;
            let detail = format!("role={role}");
            let created = conclude(o.store, "user.create", &name, &detail, r).await?;
            println!("user {name} created with role {role}");
            if let Some(p) = created.one_time_password {
                println!(
                    "one-time password: {p}  (shown only now; must be changed at first sign-in)"
                );
            }
        }
        UserCmd::List { dir } => {
            let o = open(&dir).await?;
            let users = o.store.list_users().await;
            o.store.close().await;
            let users = users?;
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
            let o = open(&dir).await?;
            let r = o.store.update_user(&name, Some(role), None).await?;
            let detail = format!("role={role}");
            conclude(o.store, "user.update", &name, &detail, r).await?;
            println!("user {name} is now {role}");
        }
        UserCmd::Disable { dir, name } => {
            let o = open(&dir).await?;
            let r = o.store.update_user(&name, None, Some(true)).await?;
            conclude(o.store, "user.update", &name, "disabled=true", r).await?;
            println!("user {name} disabled and signed out");
        }
        UserCmd::Enable { dir, name } => {
            let o = open(&dir).await?;
            let r = o.store.update_user(&name, None, Some(false)).await?;
            conclude(o.store, "user.update", &name, "disabled=false", r).await?;
            println!("user {name} enabled");
        }
        UserCmd::Delete { dir, name } => {
            let o = open(&dir).await?;
            let r = o.store.delete_user(&name).await?;
            conclude(o.store, "user.delete", &name, "", r).await?;
            println!("user {name} deleted");
        }
        UserCmd::ResetMfa { dir, name } => {
            let o = open(&dir).await?;
            let r = if o.store.reset_mfa(&name).await? {
                Ok(())
            } else {
                Err(UserChange::NoUser(name.clone()))
            };
            conclude(o.store, "user.reset_mfa", &name, "", r).await?;
            println!("MFA of {name} turned off; they can set it up again");
        }
        UserCmd::ResetPassword { dir, name } => {
            let o = open(&dir).await?;
            let Some(user) = o.store.user_by_name(&name).await? else {
                o.store.close().await;
                anyhow::bail!(Usage(format!("no user {name}")));
            };
            let pw = password::one_time_password();
            let hash = Passwords::new(o.cfg.auth.argon2_cost())?.hash(&pw)?;
            o.store.set_password(user.id, &hash, true, None).await?;
            o.store.clear_failures(&user.name).await?;
            record(&o.store, "user.reset_password", &name, "ok", "").await?;
            o.store.close().await;
            println!(
                "one-time password for {name}: {pw}  (shown only now; must be changed at first sign-in)"
            );
        }
    }
    Ok(())
}
