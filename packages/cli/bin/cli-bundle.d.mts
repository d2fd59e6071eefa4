/** The path of the CLI's bundle, built first if it is missing or older than one of its sources. */
export function cliBundle (): Promise<string>
