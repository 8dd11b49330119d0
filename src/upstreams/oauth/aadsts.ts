/**
 * Why Entra ID refused a token, and what to change: the AADSTS codes an app using the client-credentials flow
 * meets, as data (one row per code). Texts follow Microsoft's "Microsoft Entra authentication and authorization
 * error codes" reference (https://learn.microsoft.com/entra/identity-platform/reference-error-codes).
 */
export interface TokenFailureRow {
  /** Matched against "error: error_description" of the token response, or the network error. */
  pattern: RegExp;
  /** What is wrong and how to fix it, in words for the person running smarthost. */
  fix: string;
}

export const TOKEN_FAILURES: readonly TokenFailureRow[] = [
  { pattern: /AADSTS7000215\b/, fix: 'the client secret is wrong: copy the secret\'s Value (not its Secret ID) from the app registration\'s "Certificates & secrets" into clientSecret' },
  { pattern: /AADSTS7000222\b/, fix: 'the client secret has expired: create a new one under "Certificates & secrets" and update clientSecret' },
  { pattern: /AADSTS700016\b/, fix: 'no application with this clientId exists in the tenant: check clientId and tenantId, and that the app is registered in (or consented to by) that tenant' },
  { pattern: /AADSTS90002\b/, fix: 'the tenant does not exist: check tenantId (the Directory (tenant) ID on the app registration\'s Overview page)' },
  { pattern: /AADSTS900023\b/, fix: 'tenantId is not a valid tenant identifier: use the Directory (tenant) ID GUID or a verified domain' },
  { pattern: /AADSTS700027\b/, fix: 'the certificate assertion was refused: upload the certificate (public part) to the app registration and check certificate.thumbprintSha256 and that the private key belongs to it' },
  { pattern: /AADSTS700023\b|AADSTS7000274\b/, fix: 'the certificate is not registered on the app or has expired: upload a valid certificate under "Certificates & secrets"' },
  { pattern: /AADSTS700024\b/, fix: 'the client assertion is outside its valid time range: check this machine\'s clock (NTP)' },
  { pattern: /AADSTS7000112\b/, fix: 'the application is disabled in the tenant: enable it under Enterprise applications > Properties' },
  { pattern: /AADSTS500011\b/, fix: 'the resource of the requested scope is not known in the tenant: check the scope, and that Exchange Online / Microsoft Graph is licensed there' },
  { pattern: /AADSTS1002012\b|AADSTS70011\b/, fix: 'the scope is invalid: client-credentials scopes end in "/.default" (e.g. https://outlook.office365.com/.default)' },
  { pattern: /AADSTS53003\b/, fix: 'a Conditional Access policy blocks this app: exclude the service principal or allow its network location' },
  { pattern: /AADSTS7000218\b/, fix: 'no credential was sent: set clientSecret or certificate for this app' },
  { pattern: /invalid_client/, fix: 'the credentials were refused: check clientId, clientSecret or the certificate' },
  { pattern: /ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|timed? ?out|certificate|self[- ]signed|network|endpoints_resolution_error/i, fix: 'the identity provider could not be reached: check authorityHost, DNS, and that the firewall or proxy lets this machine reach it over HTTPS' },
];

/** The fix for a token failure, or a generic one; and the AADSTS code when the text carries one. */
export function explainTokenFailure(text: string): { fix: string; code?: string } {
  const code = /AADSTS\d+/.exec(text)?.[0];
  const row = TOKEN_FAILURES.find((r) => r.pattern.test(text));
  return {
    fix: row?.fix ?? 'check tenantId, clientId and the credential of this app registration',
    ...(code ? { code } : {}),
  };
}
