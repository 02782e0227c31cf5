// The Key Vault: the ClickHouse password (read by the handler through the Key Vault SDK and
// re-read on a schedule and on a refused login, so a rotation needs no restart) and the spool
// signing key (an app-setting reference, resolved by the platform). APIM's function host key
// is written here by apim.bicep. RBAC mode: access is granted by role (roles.bicep), never by
// access policy.

@description('Azure region.')
param location string

@description('Key Vault name: 3 to 24 letters, digits and hyphens, globally unique.')
@minLength(3)
@maxLength(24)
param name string

@description('Name of the secret holding the ClickHouse service login\'s password (CHGATE_CLICKHOUSE_PASSWORD_SECRET).')
param clickhousePasswordSecretName string

@description('The ClickHouse password. Empty leaves the secret as it is in the vault, so a later deployment does not undo a rotation (docs/operations.md).')
@secure()
param clickhousePassword string = ''

@description('Name of the secret holding the spool signing key (referenced by the CHGATE_SPOOL_KEY app setting).')
param spoolKeySecretName string

@description('A random secret of at least 32 characters that signs spooled ingest batches. Keep it stable: batches signed with another key are refused on replay.')
@secure()
@minLength(32)
param spoolSigningKey string

@description('Days a deleted vault or secret can be recovered (7 to 90; fixed once the vault exists).')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 7

param tags object = {}

resource vault 'Microsoft.KeyVault/vaults@2024-11-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    // Short by default so that a torn-down environment's name is free again soon; raise it
    // (and set enablePurgeProtection) for production.
    softDeleteRetentionInDays: softDeleteRetentionInDays
    // App-setting Key Vault references do not work through a network-restricted vault on
    // Flex Consumption without virtual network integration.
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource clickhousePasswordSecret 'Microsoft.KeyVault/vaults/secrets@2024-11-01' = if (!empty(clickhousePassword)) {
  parent: vault
  name: clickhousePasswordSecretName
  properties: {
    value: clickhousePassword
    contentType: 'text/plain'
  }
}

resource spoolKeySecret 'Microsoft.KeyVault/vaults/secrets@2024-11-01' = {
  parent: vault
  name: spoolKeySecretName
  properties: {
    value: spoolSigningKey
    contentType: 'text/plain'
  }
}

output name string = vault.name
output id string = vault.id
@description('The vault URI, with its trailing slash (https://<name>.vault.azure.net/).')
output uri string = vault.properties.vaultUri
