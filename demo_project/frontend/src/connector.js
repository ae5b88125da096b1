// The backend connector: credentials from Django's token view, uploads to powersync_django's upload endpoint.

/** Error of a request the SDK should retry later (network down, server trouble, expired session). */
class RetryLater extends Error {}

export class DjangoConnector {
  /**
   * @param {object} options
   * @param {string} options.endpoint  The PowerSync endpoint (the Django site root here), no trailing slash.
   * @param {(rejected: object[], error: object) => void} [options.onRejected]  Told about refused uploads.
   */
  constructor({ endpoint, onRejected }) {
    this.endpoint = endpoint;
    this.onRejected = onRejected ?? (() => {});
    this.credentials = null;
  }

  /** A token for the logged-in user: GET <endpoint>/api/token with the session cookie. */
  async fetchCredentials() {
    const response = await fetch(`${this.endpoint}/api/token`, { credentials: 'same-origin' });
    if (response.status === 401) {
      // The session ended: back to the login page.
      window.location.assign(`/accounts/login/?next=${encodeURIComponent(window.location.pathname)}`);
      throw new RetryLater('not logged in');
    }
    if (!response.ok) throw new RetryLater(`token view answered ${response.status}`);
    const { token, expires_at: expiresAt, user_id: userId } = await response.json();
    this.credentials = { endpoint: this.endpoint, token, expiresAt: new Date(expiresAt * 1000), userId };
    return this.credentials;
  }

  async token() {
    const fresh = this.credentials && this.credentials.expiresAt.getTime() - Date.now() > 60_000;
    return fresh ? this.credentials.token : (await this.fetchCredentials()).token;
  }

  /** Sends the next local transaction to POST <endpoint>/api/upload (docs/uploads.md). */
  async uploadData(database) {
    const transaction = await database.getNextCrudTransaction();
    if (!transaction) return;
    // A network error (offline) throws here: the SDK keeps the transaction and retries later.
    const response = await fetch(`${this.endpoint}/api/upload`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Token ${await this.token()}` },
      body: JSON.stringify({ batch: transaction.crud.map((entry) => entry.toJSON()) }),
    });
    if (response.ok) {
      await transaction.complete();
      return;
    }
    const body = await response.json().catch(() => null);
    if (response.status === 401) this.credentials = null;
    if (response.status >= 500 || response.status === 401 || response.status === 429) {
      throw new RetryLater(`upload failed (${response.status}): ${body?.error?.description ?? ''}`);
    }
    // Any other 4xx is permanent: acknowledge it (the next sync restores the server's rows) and report it.
    console.error('Upload rejected', response.status, body?.error);
    this.onRejected(transaction.crud.map((entry) => entry.toJSON()), body?.error);
    await transaction.complete();
  }
}
