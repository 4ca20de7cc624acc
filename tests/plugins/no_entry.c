/*
 * no_entry.c - a shared object that is not a kvcd adapter (it does not export
 * kvcd_adapter_entry); loading it as a plugin must fail with a clear message.
 */
int kvcd_not_an_adapter(void);

int kvcd_not_an_adapter(void)
{
    return 42;
}
