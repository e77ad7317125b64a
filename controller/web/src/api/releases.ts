// Application releases: list, show, upload an archive, delete.

import { api } from './client';
import type { ReleaseParams, ReleaseView } from './types';

const release = (id: number) => `/api/v1/releases/${encodeURIComponent(String(id))}`;

export const listReleases = (app?: string, signal?: AbortSignal) =>
  api.get<ReleaseView[]>('/api/v1/releases', { query: { app }, signal });

export const getRelease = (id: number, signal?: AbortSignal) => api.get<ReleaseView>(release(id), { signal });

export const deleteRelease = (id: number) => api.del(release(id));

/** Uploads an archive (.zip, .tar.gz or .tar): the file is the request body, streamed by the
 * browser, and what the release is goes in the query. */
export const uploadRelease = (file: Blob, params: ReleaseParams) =>
  api.post<ReleaseView>('/api/v1/releases', undefined, {
    query: { ...params },
    upload: { data: file, type: 'application/octet-stream' },
  });
