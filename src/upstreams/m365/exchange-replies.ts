/**
 * What Exchange Online's SMTP replies mean for smarthost, as data: a new Exchange error is one row. Sources:
 * - "Email non-delivery reports and SMTP errors in Exchange Online"
 *   https://learn.microsoft.com/exchange/troubleshoot/email-delivery/ndr/non-delivery-reports-in-exchange-online
 * - "Continuous error throttling for SMTP AUTH submissions in Exchange Online"
 *   https://learn.microsoft.com/exchange/mail-flow-best-practices/continuous-error-throttling-smtp-auth-submissions
 * - "Exchange Online limits", sending limits
 *   https://learn.microsoft.com/office365/servicedescriptions/exchange-online-service-description/exchange-online-limits
 * - "Authenticate an IMAP, POP or SMTP connection using OAuth"
 *   https://learn.microsoft.com/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth
 * - Set-OrganizationConfig -RejectDirectSend (Direct Send blocked tenant-wide: 550 5.7.68)
 */
import type { SmtpError } from '../../smtp-error.js';
import { classifyReply, type ClassifiedReply, type ReplyRow } from '../reply-table.js';

/** How an upstream logs in to Exchange Online: with an app's token (XOAUTH2), or a password (legacyBasicAuth). */
export type ExchangeLogin = 'app' | 'legacyBasicAuth';

export interface ExchangeReplyRow extends ReplyRow {
  /** Only for upstreams that log in this way; the first row that matches wins, so it comes before the general one. */
  login?: ExchangeLogin;
}

/** When Microsoft turns Basic auth for SMTP AUTH client submission off by default. */
export const BASIC_AUTH_RETIREMENT = 'the end of December 2026';

const AUTH_FIX =
  'grant the app the Office 365 Exchange Online application permission SMTP.SendAsApp (with admin consent), register its service principal in Exchange Online (New-ServicePrincipal -AppId CLIENT_ID -ObjectId ENTERPRISE_APP_OBJECT_ID) and give it the mailbox (Add-MailboxPermission -Identity MAILBOX -User SERVICE_PRINCIPAL_ID -AccessRights FullAccess)';

export const EXCHANGE_REPLIES: readonly ExchangeReplyRow[] = [
  {
    pattern: /^4\d\d 4\.3\.2\b/,
    action: 'defer',
    explanation: 'Exchange Online refused another concurrent connection for this mailbox (at most 3 per mailbox); retried later',
  },
  {
    pattern: /^5\d\d 5\.2\.0\b.*SubmissionQuotaExceeded/i,
    action: 'defer',
    explanation: 'the mailbox reached its Exchange Online sending limit (30 messages a minute, 10,000 recipients a day); retried later, not bounced',
  },
  {
    pattern: /^5\d\d 5\.2\.25[1-5]\b/,
    action: 'defer',
    explanation:
      'Exchange Online throttles this mailbox after continuous errors (mailbox full, send-as denied, invalid license, too many or invalid recipients); retried later, fix the cause shown',
  },
  {
    pattern: /^5\d\d 5\.7\.30\b/,
    action: 'alert',
    explanation: 'Exchange Online no longer accepts Basic authentication for SMTP AUTH client submission: replace legacyBasicAuth by an app (OAuth) under microsoft.apps',
  },
  {
    pattern: /^5\d\d 5\.7\.139\b/,
    action: 'alert',
    explanation:
      'SMTP AUTH is disabled for the mailbox or the tenant (or Security Defaults block it): enable it for the mailbox with Set-CASMailbox -Identity MAILBOX -SmtpClientAuthenticationDisabled $false',
  },
  {
    pattern: /^5\d\d 5\.7\.3\b/,
    login: 'legacyBasicAuth',
    action: 'alert',
    explanation:
      `Exchange Online refused the mailbox's password (legacyBasicAuth): check legacyBasicAuth.user and pass (an app password where the account uses MFA; Security Defaults or Conditional Access can refuse Basic auth) and that SMTP AUTH is enabled for the mailbox (Set-CASMailbox -Identity MAILBOX -SmtpClientAuthenticationDisabled $false). Microsoft turns Basic auth for SMTP AUTH off by default at ${BASIC_AUTH_RETIREMENT}: move to an app under microsoft.apps (OAuth)`,
  },
  {
    pattern: /^5\d\d 5\.7\.3\b/,
    action: 'alert',
    explanation: `Exchange Online refused the login: ${AUTH_FIX}`,
  },
  {
    pattern: /^5\d\d 5\.7\.57\b/,
    action: 'alert',
    explanation: 'Exchange Online wants an authenticated client: SMTP AUTH did not happen or was refused; check the app, SMTP.SendAsApp and the mailbox permissions',
  },
  {
    pattern: /^5\d\d 5\.7\.60\b/,
    action: 'bounce',
    explanation:
      'the mailbox has no permission to send as this sender: grant it SendAs on the sender (Add-RecipientPermission -Identity SENDER -Trustee MAILBOX -AccessRights SendAs), or send from the mailbox\'s own address',
  },
  {
    pattern: /^5\d\d 5\.7\.68\b/,
    action: 'bounce',
    explanation:
      'the tenant rejects Direct Send (Set-OrganizationConfig -RejectDirectSend $true): create a partner inbound connector for this relay (its static IP or its certificate), or send through m365-smtp or graph',
  },
];

/**
 * The first row that matches `error`, applied: defer and alert become temporary (4xx), bounce stays permanent.
 * `login` is how the upstream logged in, so a refused login is explained for that login; rows for another are skipped.
 */
export function classifyExchangeReply(error: SmtpError, login?: ExchangeLogin): ClassifiedReply<ExchangeReplyRow> {
  return classifyReply(
    error,
    EXCHANGE_REPLIES.filter((row) => row.login === undefined || row.login === login),
    'Exchange',
  );
}
