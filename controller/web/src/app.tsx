// The app: restores the session, gates on sign-in (and on a pending password change or MFA
// setup), and routes the signed-in pages.

import { useEffect, useRef } from 'preact/hooks';
import type { Whoami } from './api/types';
import { Layout } from './components/Layout';
import { MfaSetup } from './components/MfaSetup';
import { Page } from './components/Page';
import { Loading } from './components/States';
import { Toasts } from './components/Toasts';
import { isAdmin } from './lib/commands';
import { matchRoute, safeReturnPath } from './lib/paths';
import { Link, navigate, useLocation } from './lib/router';
import { enter, loginUrl, session, start } from './lib/session';
import { useStore } from './lib/store';
import { ApprovalsPage } from './pages/Approvals';
import { AuditPage } from './pages/Audit';
import { CommandsPage } from './pages/Commands';
import { DevicePage } from './pages/Device';
import { EnrollmentPage } from './pages/Enrollment';
import { FleetPage } from './pages/Fleet';
import { LoginPage } from './pages/Login';
import { ProfilePage } from './pages/Profile';
import { ReleasePage, ReleasesPage } from './pages/Releases';
import { RolloutPage } from './pages/Rollout';
import { NewRolloutPage, RolloutsPage } from './pages/Rollouts';
import { UsersPage } from './pages/Users';

function NotFound({ admin }: { admin?: boolean }) {
  return (
    <Page title={admin ? 'Not available' : 'Page not found'}>
      <p>
        {admin ? 'This page is for administrators only.' : 'There is nothing at this address.'}{' '}
        <Link href="/">Go to the fleet overview</Link>.
      </p>
    </Page>
  );
}

function MfaGate({ user }: { user: Whoami }) {
  return (
    <Page title="Set up two-factor sign-in">
      <p class="notice" role="status">
        Your role ({user.role}) requires two-factor sign-in. Set it up to continue.
      </p>
      <section class="card">
        <MfaSetup onDone={() => enter().then(() => undefined)} />
      </section>
    </Page>
  );
}

/** A positive integer id from a path, or null. */
function numericId(params: Record<string, string> | null): number | null {
  const id = Number(params?.id);
  return params?.id && /^\d+$/.test(params.id) && id > 0 ? id : null;
}

function Routes({ user }: { user: Whoami }) {
  const { path } = useLocation();
  const admin = isAdmin(user.role);
  const device = matchRoute('/devices/:id', path);
  const release = numericId(matchRoute('/releases/:id', path));
  const rollout = numericId(matchRoute('/rollouts/:id', path));
  // Signed in on /login: the redirect to the page to return to is on its way.
  if (path === '/login') return <Loading />;
  if (matchRoute('/', path)) return <FleetPage />;
  if (device?.id) return <DevicePage id={device.id} user={user} />;
  if (matchRoute('/commands', path)) return <CommandsPage user={user} />;
  if (matchRoute('/approvals', path)) return <ApprovalsPage user={user} />;
  if (matchRoute('/releases', path)) return <ReleasesPage user={user} />;
  if (release) return <ReleasePage key={release} id={release} user={user} />;
  if (matchRoute('/rollouts', path)) return <RolloutsPage user={user} />;
  if (matchRoute('/rollouts/new', path)) return <NewRolloutPage user={user} />;
  if (rollout) return <RolloutPage key={rollout} id={rollout} user={user} />;
  if (matchRoute('/profile', path)) return <ProfilePage user={user} />;
  if (matchRoute('/enrollment', path)) return admin ? <EnrollmentPage /> : <NotFound admin />;
  if (matchRoute('/users', path)) return admin ? <UsersPage user={user} /> : <NotFound admin />;
  if (matchRoute('/audit', path)) return admin ? <AuditPage /> : <NotFound admin />;
  return <NotFound />;
}

/** Moves focus to the new page's heading after an in-app navigation. */
function useFocusOnNavigate(path: string) {
  const first = useRef(true);
  useEffect(() => {
    if (first.current) {
      first.current = false;
      return;
    }
    document.querySelector<HTMLElement>('main h1')?.focus();
  }, [path]);
}

export function App() {
  const s = useStore(session);
  const { path, search } = useLocation();
  useFocusOnNavigate(path);

  useEffect(() => {
    void start();
  }, []);

  useEffect(() => {
    if (s.state === 'signed_out' && path !== '/login') {
      navigate(loginUrl(path + search), { replace: true });
    } else if (s.state === 'signed_in' && path === '/login' && !s.user.must_change_password) {
      navigate(safeReturnPath(new URLSearchParams(search).get('next')), { replace: true });
    }
  }, [s, path, search]);

  let body;
  if (s.state === 'starting') {
    body = (
      <div class="splash">
        <Loading label="Starting…" />
      </div>
    );
  } else if (s.state === 'signed_out') {
    body = <LoginPage key="login" />;
  } else if (s.user.must_change_password) {
    body = <LoginPage key="password-gate" forceChange />;
  } else {
    body = (
      <Layout user={s.user}>
        {s.user.mfa_required && !s.user.mfa_enabled ? <MfaGate user={s.user} /> : <Routes user={s.user} />}
      </Layout>
    );
  }
  return (
    <>
      {body}
      <Toasts />
    </>
  );
}
