/** Names given on the command line that become file names. */

/**
 * What a company may be named: its name becomes a file name at the site (`NAME.scan`, `NAME.chunks`, a folder in the
 * chunk stores' temporary folder), so never "." or ".." (the temporary folder itself, whose files a store opening
 * there would take for its own) nor hidden.
 */
export const COMPANY_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
/** COMPANY_NAME in words, for the one-line error. */
export const COMPANY_NAME_RULE = 'use letters, digits, . _ - (at most 64), starting with a letter or digit';
